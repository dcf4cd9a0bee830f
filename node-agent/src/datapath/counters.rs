//! Reading the per-CPU event counters.

use aya::maps::{Map, PerCpuArray};
use serde::Serialize;
use warren_ebpf_common::{Counter, map};

use super::DatapathError;

/// Counter values summed over all CPUs, in [`Counter::ALL`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    values: Vec<(&'static str, u64)>,
}

impl Counters {
    pub(super) fn read(map: &Map) -> Result<Self, DatapathError> {
        let err = DatapathError::map(map::COUNTERS);
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(err)?;
        let mut values = Vec::with_capacity(Counter::ALL.len());
        for &counter in Counter::ALL {
            let per_cpu = array
                .get(&(counter as u32), 0)
                .map_err(DatapathError::map(map::COUNTERS))?;
            values.push((counter.name(), per_cpu.iter().sum()));
        }
        Ok(Self { values })
    }

    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values
            .iter()
            .find(|(name, _)| *name == counter.name())
            .map_or(0, |(_, v)| *v)
    }

    /// All counters by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.values.iter().copied()
    }
}
