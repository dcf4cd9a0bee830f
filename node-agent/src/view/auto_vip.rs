//! Addresses for ServiceEntry hosts that have none, as Istio allocates them.
//!
//! A host that a ServiceEntry names without `addresses` gets one from
//! 240.240.0.0/16, and its IPv6 twin from 2001:2::/48 (resolution `DNS`,
//! `DNS_ROUND_ROBIN` or `STATIC`; not wildcards): one slot, two addresses,
//! so a pod of either family reaches the host. ztunnel's DNS proxy answers the host with it, so a pod's connection
//! to the host reaches ztunnel as a connection to that address. ztunnel resolves it
//! to the entry: its endpoints, its waypoint, its policies. Without it the
//! connection would go to whatever address a DNS server gave, which the mesh does
//! not know. `NONE` entries get no address: they go to the address dialled.
//!
//! Every agent computes the same addresses from the same configuration, without
//! talking to the others. A host's slot is the first free one of its own
//! sequence of hashes of the namespace and host (FNV-1a, the same in every
//! version). Hosts take their turn oldest entry first, so a new entry never moves
//! an older entry's addresses, which clients may hold (they are in DNS answers).
//! Removing an entry can move a later host only if it had collided with it, and
//! then only back to its first choice. The ranges are Istio's; the addresses
//! are Warren's own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use crate::{
    model::{Kind, Object, istio::Resolution},
    store::Store,
};

/// (namespace, host) → its slot.
pub type AutoVips = BTreeMap<(String, String), Slot>;

/// Usable addresses of 240.240.0.0/16: .0.1 to .255.254.
const SLOTS: u32 = 65_534;

/// One allocation: the `n`-th address (1 to [`SLOTS`]) of each range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u16);

impl Slot {
    /// 240.240.x.y.
    pub fn v4(self) -> Ipv4Addr {
        let [high, low] = self.0.to_be_bytes();
        Ipv4Addr::new(240, 240, high, low)
    }

    /// 2001:2::f0f0:n, in the benchmarking range (RFC 5180), never routed.
    pub fn v6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0xf0f0, self.0)
    }

    /// Both addresses, IPv4 first.
    pub fn addresses(self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4()), IpAddr::V6(self.v6())]
    }
}

/// The address of every ServiceEntry host that needs one.
pub fn allocate(store: &Store) -> AutoVips {
    // (created, namespace, host): oldest first; names break ties, and order
    // objects without a creation time (local mode).
    let mut wanted: BTreeSet<(i64, String, String)> = BTreeSet::new();
    for object in store.of_kind(Kind::ServiceEntry) {
        let Object::ServiceEntry(entry) = object else {
            continue;
        };
        let spec = &entry.spec;
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        if !spec.addresses.is_empty() || resolution == Resolution::None {
            continue;
        }
        let namespace = entry.metadata.namespace.as_deref().unwrap_or("default");
        let created = entry
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second());
        for host in spec.hosts.iter().filter(|h| !h.contains('*')) {
            wanted.insert((created, namespace.to_owned(), normal(host)));
        }
    }
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    let mut out = AutoVips::new();
    for (_, namespace, host) in wanted {
        // At most 65 534 hosts fit; past that the rest get none.
        if taken.len() as u32 >= SLOTS {
            break;
        }
        if out.contains_key(&(namespace.clone(), host.clone())) {
            continue;
        }
        // The host's own sequence of candidates, then (in a nearly full range) a
        // scan for what is left.
        let mut candidates = (0u32..64)
            .map(|attempt| {
                fnv1a(&[
                    namespace.as_bytes(),
                    b"/",
                    host.as_bytes(),
                    &attempt.to_be_bytes(),
                ]) % SLOTS
            })
            .chain(0..SLOTS);
        let Some(slot) = candidates.find(|slot| !taken.contains(slot)) else {
            break;
        };
        taken.insert(slot);
        // 0 and 65 535 stay out of the IPv4 range (network, broadcast).
        let Ok(n) = u16::try_from(slot + 1) else {
            break;
        };
        out.insert((namespace, host), Slot(n));
    }
    out
}

/// A host as DNS compares names: any case, with or without the trailing dot.
pub fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// 32-bit FNV-1a over the parts, in order.
fn fnv1a(parts: &[&[u8]]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The namespaces whose hosts' addresses differ between `before` and `after`.
pub fn namespaces_changed(before: &AutoVips, after: &AutoVips) -> BTreeSet<String> {
    let keys: BTreeSet<&(String, String)> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|(ns, _)| ns.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Store {
        Store::from_yaml(yaml)
    }

    fn entry(ns: &str, name: &str, hosts: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: {name}, namespace: {ns} }}\nspec:\n  hosts: [{hosts}]\n  ports: [{{ number: 443, name: tls, protocol: TLS }}]\n{extra}"
        )
    }

    #[test]
    fn hosts_without_addresses_get_stable_distinct_ones() {
        let yaml = [
            entry(
                "shop",
                "api",
                "api.example.com, pay.example.com",
                "  resolution: DNS\n",
            ),
            entry(
                "shop",
                "wild",
                "\"*.example.org\"",
                "  resolution: STATIC\n  endpoints: [{ address: 192.0.2.8 }]\n",
            ),
            entry(
                "shop",
                "given",
                "given.example.com",
                "  resolution: DNS\n  addresses: [192.0.2.7]\n",
            ),
            entry("shop", "none", "none.example.com", "  resolution: NONE\n"),
            entry(
                "bank",
                "api",
                "api.example.com",
                "  resolution: STATIC\n  endpoints: [{ address: 192.0.2.9 }]\n",
            ),
        ]
        .concat();
        let vips = allocate(&store(&yaml));
        let key = |ns: &str, host: &str| (ns.to_owned(), host.to_owned());
        let got: BTreeSet<_> = vips.keys().cloned().collect();
        assert_eq!(
            got,
            BTreeSet::from([
                key("bank", "api.example.com"),
                key("shop", "api.example.com"),
                key("shop", "pay.example.com"),
            ]),
            "wildcards, entries with addresses and NONE entries get none"
        );
        let distinct: BTreeSet<_> = vips.values().collect();
        assert_eq!(distinct.len(), 3);
        for slot in vips.values() {
            let v4 = slot.v4();
            assert_eq!(&v4.octets()[..2], &[240, 240]);
            assert!(!matches!(v4.octets()[2..], [0, 0] | [255, 255]), "{v4}");
            // The IPv6 twin ends as the IPv4 address does.
            let v6 = slot.v6().octets();
            assert_eq!(&v6[..4], &[0x20, 0x01, 0, 2], "{}", slot.v6());
            assert_eq!(&v6[12..14], &[0xf0, 0xf0]);
            assert_eq!(v6[14..], v4.octets()[2..]);
            assert_eq!(slot.addresses(), [IpAddr::V4(v4), IpAddr::V6(slot.v6())]);
        }
        // Another agent, or this one later with more entries: the same addresses.
        let more = yaml.clone() + &entry("zoo", "x", "x.example.com", "  resolution: DNS\n");
        let again = allocate(&store(&more));
        for (k, ip) in &vips {
            assert_eq!(again.get(k), Some(ip), "{k:?} moved");
        }
        assert_eq!(
            namespaces_changed(&vips, &again),
            BTreeSet::from(["zoo".to_owned()])
        );
    }

    /// Thousands of hosts in one range: collisions happen, and still every host has
    /// its own address, and hosts added later (newer entries) move none of them.
    #[test]
    fn collisions_never_move_an_older_entrys_address() {
        let many = |n: usize, from: usize| -> String {
            (from..from + n)
                .map(|i| {
                    let created = format!("2026-01-01T00:{:02}:{:02}Z", i / 60 % 60, i % 60);
                    format!(
                        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{ name: e{i}, namespace: ns{}, creationTimestamp: \"{created}\" }}\nspec:\n  hosts: [h{i}.example.com]\n  ports: [{{ number: 443, name: tls, protocol: TLS }}]\n  resolution: DNS\n",
                        i % 7
                    )
                })
                .collect()
        };
        let first = allocate(&store(&many(2000, 0)));
        assert_eq!(first.len(), 2000);
        let distinct: BTreeSet<_> = first.values().collect();
        assert_eq!(distinct.len(), 2000);
        let slots_hashed: BTreeSet<u32> = first
            .keys()
            .map(|(ns, host)| {
                fnv1a(&[ns.as_bytes(), b"/", host.as_bytes(), &0u32.to_be_bytes()]) % SLOTS
            })
            .collect();
        assert!(slots_hashed.len() < 2000, "no collision to test");
        let later = allocate(&store(&(many(2000, 0) + &many(500, 3000))));
        for (k, ip) in &first {
            assert_eq!(later.get(k), Some(ip), "{k:?} moved");
        }
        // Hosts are matched as DNS asks them.
        assert_eq!(normal("API.Example.com."), "api.example.com");
    }
}
