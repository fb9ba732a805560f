//! An nginx origin (Debian's nginx-light) started as the test's own process
//! on a loopback address of its own, with a temporary config. Every answer
//! names the origin and echoes the forwarding headers it got, so a test can
//! tell which backend served a request and with what.
#![allow(dead_code)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

pub struct Nginx {
    pub name: String,
    pub ip: String,
    pub port: u16,
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
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    listen {ip}:{port};\n\
                 location / {{\n      default_type text/plain;\n      add_header X-Origin {name};\n\
                   return 200 \"{name} xff=$http_x_forwarded_for proto=$http_x_forwarded_proto host=$http_x_forwarded_host uri=$request_uri\\n\";\n    }}\n\
               }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
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
        Nginx { name: name.into(), ip: ip.into(), port, dir, child }
    }

    /// Requests this origin has logged so far.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.join("access.log")).map(|t| t.lines().count()).unwrap_or(0)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
