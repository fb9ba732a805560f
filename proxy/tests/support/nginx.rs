//! An nginx origin (Debian's nginx-light) started as the test's own process
//! on a loopback address of its own, with a temporary config. Every answer
//! names the origin and echoes the forwarding headers it got, so a test can
//! tell which backend served a request and with what.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::support::free_port;

pub struct Nginx {
    pub name: String,
    pub ip: String,
    pub port: u16,
    /// A second listener that expects a PROXY protocol header first, and
    /// answers `<name> pp client=ADDR:PORT server=ADDR:PORT` from it.
    pub pp_port: u16,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// Starts an origin called `name` on `ip` (a free port). `GET /any`
    /// answers `200 <name> xff=<X-Forwarded-For> proto=… host=…`.
    pub fn start(dir: &Path, name: &str, ip: &str) -> Nginx {
        let dir = dir.join(format!("nginx-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port(ip);
        let pp_port = free_port(ip);
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {ip}:{port};\n\
                 location / {{\n      default_type text/plain;\n      add_header X-Origin {name};\n\
                   return 200 \"{name} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto host=$http_x_forwarded_host uri=$request_uri\\n\";\n    }}\n\
                 location /cc/ {{\n      default_type text/plain;\n      add_header Cache-Control $arg_cc;\n\
                   return 200 \"{name} cached uri=$request_uri\\n\";\n    }}\n\
                 location /flip {{\n      default_type text/plain;\n      add_header Cache-Control $http_x_cc;\n\
                   return 200 \"{name} flip cc=$http_x_cc\\n\";\n    }}\n\
                 location /vary {{\n      default_type text/plain;\n      add_header Cache-Control max-age=60;\n\
                   add_header Vary Accept-Language;\n      return 200 \"{name} lang=$http_accept_language\\n\";\n    }}\n\
                 location /static/ {{\n      alias {d}/www/;\n      add_header Cache-Control $arg_cc;\n    }}\n\
                 location /slow/ {{\n      alias {d}/www/;\n      limit_rate 10k;\n      add_header Cache-Control max-age=60;\n    }}\n\
                 location /upload/ {{\n      alias {d}/up/;\n      dav_methods PUT;\n      create_full_put_path on;\n      client_max_body_size 8m;\n    }}\n\
               }}\n\
               server {{\n    listen {ip}:{pp_port} proxy_protocol;\n\
                 location / {{\n      default_type text/plain;\n\
                   return 200 \"{name} pp client=$proxy_protocol_addr:$proxy_protocol_port server=$proxy_protocol_server_addr:$proxy_protocol_server_port\\n\";\n    }}\n\
               }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        // Static files: nginx gives them ETag and Last-Modified, and
        // answers If-None-Match with 304.
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::write(dir.join("www/page.html"), format!("<p>{name} static page</p>\n")).unwrap();
        std::fs::write(dir.join("www/slow.bin"), vec![b's'; 20 * 1024]).unwrap();
        std::fs::write(dir.join("www/big.bin"), vec![b'b'; 300 * 1024]).unwrap();
        std::fs::write(dir.join("www/mid.bin"), vec![b'm'; 20 * 1024]).unwrap();
        let child = spawn(&dir, name, ip, port);
        Nginx { name: name.into(), ip: ip.into(), port, pp_port, dir, child }
    }

    /// Starts it again (after [`Nginx::stop`]) on the same address.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.dir, &self.name, &self.ip, self.port);
    }

    /// Stops the origin (its port then refuses connections).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The status of each request logged so far, in order.
    pub fn statuses(&self) -> Vec<u16> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        // combined format: ... "GET / HTTP/1.1" 200 12 ...
        log.lines().filter_map(|l| l.split('"').nth(2)?.split_whitespace().next()?.parse().ok()).collect()
    }

    /// Requests this origin has logged so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log")).map(|t| t.lines().count()).unwrap_or(0)
    }

    /// [`Self::requests`] once two reads 50 ms apart agree (at most 2 s):
    /// nginx logs a request after its client has the answer, so a count
    /// read at once can miss the last one.
    pub fn requests_settled(&self) -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut last = self.requests();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = self.requests();
            if now == last || std::time::Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

fn spawn(dir: &Path, name: &str, ip: &str, port: u16) -> Child {
    let d = dir.display();
    let child = Command::new("nginx")
        .args(["-e", &format!("{d}/error.log"), "-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (Debian package nginx-light)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect((ip, port)).is_err() {
        if Instant::now() > deadline {
            panic!(
                "nginx {name} did not listen on {ip}:{port}: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
