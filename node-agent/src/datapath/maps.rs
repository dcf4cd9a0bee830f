//! The node's maps, opened from their pins. Opening from pins is the only
//! way in, whether this process loaded the object a moment ago or another
//! process did days ago: one code path for a fresh agent, a restarted one and
//! `warrenctl`.

use std::collections::BTreeMap;

use aya::maps::{Map, MapData};
use warren_ebpf_common::map;

use super::{DatapathError, pins::Pins};

/// How each map must be wrapped for aya's typed views. The kernel type is
/// fixed by the eBPF crate's declarations.
fn wrap(name: &str, data: MapData) -> Map {
    match name {
        map::CONFIG | map::META => Map::Array(data),
        map::ORIG_DST | map::ORIG_DST_BY_FLOW | map::SHORTCUT_SENT | map::DNS_ORIG => {
            Map::LruHashMap(data)
        }
        map::SOCKS | map::INBOUND => Map::SockHash(data),
        map::POD_STATS => Map::PerCpuHashMap(data),
        map::COUNTERS => Map::PerCpuArray(data),
        _ => Map::HashMap(data),
    }
}

/// Every map of one node, by name.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
}

impl Maps {
    pub fn open(pins: &Pins) -> Result<Self, DatapathError> {
        let mut maps = BTreeMap::new();
        for &name in map::ALL {
            let path = pins.map(name);
            if !path.exists() {
                return Err(DatapathError::MissingPin { name, path });
            }
            let data = MapData::from_pin(&path).map_err(DatapathError::map(name))?;
            maps.insert(name, wrap(name, data));
        }
        Ok(Self { maps })
    }

    pub fn get(&self, name: &'static str) -> &Map {
        // Every name in `map::ALL` was inserted by `open`.
        &self.maps[name]
    }

    pub fn get_mut(&mut self, name: &'static str) -> &mut Map {
        self.maps
            .get_mut(name)
            .expect("every map is opened by Maps::open")
    }
}
