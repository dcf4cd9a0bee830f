//! The eBPF datapath as user space sees it.
//!
//! [`Datapath`] owns the loaded object: programs, their attachments and their
//! maps. Everything else in the agent asks it questions or gives it orders;
//! nothing else touches the kernel objects.

mod counters;
mod error;
mod object;

use std::{fs::File, net::SocketAddrV4, path::Path};

use aya::{
    Ebpf,
    maps::HashMap,
    programs::{CgroupAttachMode, CgroupSockAddr},
};
use warren_ebpf_common::{AF_INET, SockAddr, map, program};

pub use counters::Counters;
pub use error::DatapathError;

/// Warren's loaded eBPF programs and maps.
pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads the embedded object into the kernel (programs verified, maps
    /// created) without attaching anything yet.
    pub fn load() -> Result<Self, DatapathError> {
        let bytes = object::bytes()?;
        let mut ebpf = Ebpf::load(bytes).map_err(DatapathError::Load)?;
        let connect4: &mut CgroupSockAddr = program_mut(&mut ebpf, program::CONNECT4)?;
        connect4.load().map_err(|source| DatapathError::Program {
            name: program::CONNECT4,
            source,
        })?;
        Ok(Self { ebpf })
    }

    /// Attaches the capture programs to the cgroup v2 folder `cgroup`, so
    /// they see every socket of every process in that subtree. They stay
    /// attached until `self` is dropped.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        let cgroup_fd = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let connect4: &mut CgroupSockAddr = program_mut(&mut self.ebpf, program::CONNECT4)?;
        // The kernel wants no flags on link-based cgroup attachments (aya
        // uses bpf_link_create on 5.7+): links always run alongside programs
        // other tools attached, so `Single` here replaces nobody.
        connect4
            .attach(&cgroup_fd, CgroupAttachMode::Single)
            .map_err(|source| DatapathError::Attach {
                name: program::CONNECT4,
                target: cgroup.display().to_string(),
                source,
            })?;
        Ok(())
    }

    /// Original destinations recorded by the connect hook, by socket cookie.
    pub fn original_destinations(&self) -> Result<Vec<(u64, SocketAddrV4)>, DatapathError> {
        let map = self
            .ebpf
            .map(map::ORIG_DST)
            .ok_or(DatapathError::MissingMap(map::ORIG_DST))?;
        let orig: HashMap<_, u64, SockAddr> =
            HashMap::try_from(map).map_err(|source| DatapathError::Map {
                name: map::ORIG_DST,
                source,
            })?;
        let mut out = Vec::new();
        for entry in orig.iter() {
            let (cookie, addr) = entry.map_err(|source| DatapathError::Map {
                name: map::ORIG_DST,
                source,
            })?;
            if addr.family == AF_INET {
                out.push((cookie, sockaddr_v4(&addr)));
            }
        }
        Ok(out)
    }

    /// Event counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map = self
            .ebpf
            .map(map::COUNTERS)
            .ok_or(DatapathError::MissingMap(map::COUNTERS))?;
        Counters::read(map)
    }
}

/// An IPv4 socket address from the kernel's layout (address in network order).
fn sockaddr_v4(addr: &SockAddr) -> SocketAddrV4 {
    SocketAddrV4::new(u32::from_be(addr.addr[0]).into(), addr.port)
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
