//! Synthetic tables for benchmarks, memory tests and load tests: `n` sites
//! with one host and one backend each, default policies, over `backends`
//! backends named `mosh0..`.

use crate::entity::{Backend, Site, SiteBackend};
use crate::Entity;

/// Backends `mosh0..moshN` on 10.0.x.y, then `n` sites `site-I` serving
/// `www.member-I.example.org` on backend `mosh(I % backends)`.
pub fn sites(n: usize, backends: usize) -> Vec<Entity> {
    let mut out: Vec<Entity> = (0..backends).map(backend).collect();
    out.extend((0..n).map(|i| site(i, backends)));
    out
}

pub fn backend(b: usize) -> Entity {
    let address = std::net::Ipv4Addr::new(10, 0, (b >> 8) as u8, b as u8);
    Entity::Backend(Backend {
        name: format!("mosh{b}").into(),
        addresses: vec![address.into()],
        state: Default::default(),
    })
}

pub fn site(i: usize, backends: usize) -> Entity {
    let backend = SiteBackend {
        backend: format!("mosh{}", i % backends.max(1)).into(),
        port: 80,
        weight: 1,
        proxy_protocol: false,
    };
    Entity::Site(Site::new(&format!("site-{i}"), &[&host(i)], vec![backend]))
}

/// The host of synthetic site `i`.
pub fn host(i: usize) -> String {
    format!("www.member-{i}.example.org")
}
