//! Loading the object, attaching its programs and pinning everything, or
//! taking over what an earlier agent pinned: adopting it as is, upgrading
//! its programs in place, or reinstalling when its maps have another shape.

use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    mem,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapInfo, SockHash},
    programs::{Program, ProgramError, SchedClassifier, SkLookup, SkMsg},
};
use tracing::{info, warn};
use warren_ebpf_common::{FlowKey, MAP_LAYOUTS, map, program};

use super::{
    DatapathError, link, object,
    pins::{INBOUND_LINK_PREFIX, Pins},
};

/// What [`install`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Nothing was there: programs loaded, attached and pinned now.
    Fresh,
    /// This agent's own programs were there: adopted, nothing attached twice.
    Adopted,
    /// Another version's programs were there (or an install cut short),
    /// with maps of the same shape: each pinned link now runs this
    /// version's program, swapped atomically, and the programs it lacked
    /// are attached, with no gap in capture and the maps' contents kept
    /// (statistics of another shape start over).
    Upgraded,
    /// The pinned maps had another shape: everything was removed and
    /// installed afresh (enrollment comes back from configuration).
    Reinstalled,
}

/// Pins that must all exist for an installation to be complete.
fn expected_pins(pins: &Pins) -> Vec<PathBuf> {
    let mut paths: Vec<_> = program::CGROUP.iter().map(|p| pins.link(p)).collect();
    paths.push(pins.prog(program::SHORTCUT));
    paths.push(pins.prog(program::GUARD));
    paths.push(pins.prog(program::INBOUND));
    paths.extend(map::ALL.iter().map(|m| pins.map(m)));
    paths
}

/// Identifies the embedded object: equal hashes, same programs.
fn object_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Installs the datapath on the cgroup subtree `cgroup`, or takes over an
/// earlier installation pinned under `pins` (see [`Installed`]).
/// Whether `folder` (open) is on a cgroup v2 file system.
fn is_cgroup2(folder: &fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fstatfs fills the zeroed struct for a valid, open descriptor.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(folder.as_raw_fd(), &mut stat) };
    rc == 0 && stat.f_type == libc::CGROUP2_SUPER_MAGIC
}

pub fn install(pins: &Pins, cgroup: &Path) -> Result<Installed, DatapathError> {
    for dir in [pins.maps_dir(), pins.links_dir(), pins.progs_dir()] {
        fs::create_dir_all(&dir).map_err(DatapathError::io("creating pin folder", &dir))?;
    }
    let bytes = object::bytes()?;
    let hash = object_hash(bytes);
    let expected = expected_pins(pins);
    let present = expected.iter().filter(|p| p.exists()).count();
    let mut outcome = Installed::Fresh;
    if present > 0 {
        let reshaped = layout_mismatches(pins);
        if reshaped
            .iter()
            .all(|(name, _)| map::STATISTICS.contains(name))
        {
            // Counters only: started over, the datapath kept.
            for (name, mismatch) in &reshaped {
                warn!(map = name, %mismatch, "pinned statistics map has another shape; starting it over");
                let path = pins.map(name);
                fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
            }
            // Links on another cgroup (`--cgroup` changed) or on one that is
            // gone capture nothing here: they go, and are attached again.
            let moved = unpin_links_elsewhere(pins, cgroup)?;
            if reshaped.is_empty()
                && moved == 0
                && present == expected.len()
                && installed_object(pins) == Some(hash)
            {
                info!(pins = %pins.root().display(), "adopting the installed datapath");
                return Ok(Installed::Adopted);
            }
            // Another build (programs added or gone, statistics reshaped), or
            // an install that died halfway: programs swapped inside the links
            // there are, the missing ones attached; maps, enrollments and
            // guards kept, and no moment without capture.
            let cgroup_fd = open_cgroup(cgroup)?;
            upgrade_in_place(pins, bytes, &cgroup_fd, cgroup)?;
            if let Some((name, mismatch)) = layout_mismatches(pins).into_iter().next() {
                // As after a fresh install: a build mistake, caught here.
                return Err(DatapathError::Layout(format!("{name}: {mismatch}")));
            }
            record_object(pins, hash)?;
            info!(pins = %pins.root().display(), "programs upgraded in place");
            return Ok(Installed::Upgraded);
        }
        // Reusing maps of another shape would corrupt them (aya reuses pins
        // without comparing): start over.
        let (name, mismatch) = &reshaped[0];
        warn!(pins = %pins.root().display(), map = name, %mismatch, "pinned maps have another shape; reinstalling");
        remove_programs(pins)?;
        remove_maps(pins)?;
        outcome = Installed::Reinstalled;
    }

    let cgroup_fd = open_cgroup(cgroup)?;
    let mut ebpf = load(pins, bytes)?;
    let target = cgroup.display().to_string();
    for &name in program::CGROUP {
        let prog = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        attach_to_cgroup(name, prog, &cgroup_fd, &pins.link(name)).map_err(|source| {
            DatapathError::Attach {
                name,
                target: target.clone(),
                source,
            }
        })?;
    }
    install_shortcut(&mut ebpf, pins)?;
    install_guard(&mut ebpf, pins)?;
    install_inbound(&mut ebpf, pins)?;
    if let Some((name, mismatch)) = layout_mismatches(pins).into_iter().next() {
        // The table in warren-ebpf-common and the eBPF declarations differ:
        // a build mistake, caught before any agent trusts the maps.
        return Err(DatapathError::Layout(format!("{name}: {mismatch}")));
    }
    record_object(pins, hash)?;
    info!(pins = %pins.root().display(), cgroup = %target, "datapath installed");
    Ok(outcome)
}

/// The cgroup v2 folder programs attach to.
fn open_cgroup(cgroup: &Path) -> Result<fs::File, DatapathError> {
    let cgroup_fd = fs::File::open(cgroup).map_err(DatapathError::io("opening cgroup", cgroup))?;
    // Attaching to a cgroup v1 folder fails with a bare EBADF; say what is wrong.
    if !is_cgroup2(&cgroup_fd) {
        return Err(DatapathError::NotCgroup2(cgroup.to_owned()));
    }
    Ok(cgroup_fd)
}

fn load(pins: &Pins, bytes: &[u8]) -> Result<Ebpf, DatapathError> {
    EbpfLoader::new()
        .default_map_pin_directory(pins.maps_dir())
        .load(bytes)
        .map_err(DatapathError::Load)
}

/// Swaps every pinned attachment to this object's programs.
fn upgrade_in_place(
    pins: &Pins,
    bytes: &[u8],
    cgroup_fd: &fs::File,
    cgroup: &Path,
) -> Result<(), DatapathError> {
    let mut ebpf = load(pins, bytes)?;
    // In attach order: what answers for captured flows before capture.
    for &name in program::CGROUP {
        let prog = ebpf
            .program_mut(name)
            .ok_or(DatapathError::MissingProgram(name))?;
        let pin = pins.link(name);
        if !pin.exists() {
            attach_to_cgroup(name, prog, cgroup_fd, &pin).map_err(|source| {
                DatapathError::Attach {
                    name,
                    target: cgroup.display().to_string(),
                    source,
                }
            })?;
            info!(
                program = name,
                "attached a program the installed datapath lacked"
            );
            continue;
        }
        load_cgroup_program(prog).map_err(prog_err(name))?;
        let fd = prog.fd().map_err(prog_err(name))?;
        link::update_pinned_link(&pin, fd.as_fd())
            .map_err(|e| DatapathError::io("updating link", pin)(e))?;
    }
    // Attaching to the SOCKHASH replaces the program attached there.
    let _ = fs::remove_file(pins.prog(program::SHORTCUT));
    install_shortcut(&mut ebpf, pins)?;
    let _ = fs::remove_file(pins.prog(program::GUARD));
    let guard_fd = install_guard(&mut ebpf, pins)?;
    for path in guard_links(pins)? {
        // A pod whose veth went while no agent ran: its link is dead (the
        // kernel detached it) and cannot take a program; it goes.
        if link::tcx_link_ifindex(&path).is_ok_and(|ifindex| ifindex == 0) {
            info!(link = %path.display(), "unpinning the guard of an interface that is gone");
            fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
            continue;
        }
        link::update_pinned_link(&path, guard_fd.as_fd())
            .map_err(|e| DatapathError::io("updating link", path)(e))?;
    }
    let _ = fs::remove_file(pins.prog(program::INBOUND));
    let inbound_fd = install_inbound(&mut ebpf, pins)?;
    for path in inbound_links(pins)? {
        // A pod namespace gone while no agent ran: its link is dead.
        if let Err(error) = link::update_pinned_link(&path, inbound_fd.as_fd()) {
            info!(link = %path.display(), %error, "unpinning the inbound capture of a namespace that is gone");
            fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
        }
    }
    remove_strays(pins)?;
    Ok(())
}

/// Unpins the cgroup links attached to another cgroup than `cgroup`, or to
/// one that is gone; how many.
fn unpin_links_elsewhere(pins: &Pins, cgroup: &Path) -> Result<usize, DatapathError> {
    use std::os::unix::fs::MetadataExt as _;
    // A cgroup's id is its folder's inode number.
    let target = fs::metadata(cgroup)
        .map_err(DatapathError::io("reading cgroup", cgroup))?
        .ino();
    let mut moved = 0;
    for name in program::CGROUP {
        let path = pins.link(name);
        if !path.exists() {
            continue;
        }
        let attached = link::cgroup_link_id(&path).unwrap_or(0);
        if attached != target {
            warn!(link = %path.display(), attached, target, "link attached elsewhere than --cgroup; attaching it again");
            fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// Unpins what an older build left that this one does not have: a link of a
/// program gone or renamed (it would keep running beside its successor) and
/// a map no program uses.
fn remove_strays(pins: &Pins) -> Result<(), DatapathError> {
    let strays = pin_files(&pins.links_dir())?.into_iter().filter(|path| {
        path.file_name().is_some_and(|name| {
            let name = name.to_string_lossy();
            !name.starts_with("guard_")
                && !name.starts_with(INBOUND_LINK_PREFIX)
                && !program::CGROUP.contains(&name.as_ref())
        })
    });
    let stray_maps = pin_files(&pins.maps_dir())?.into_iter().filter(|path| {
        path.file_name()
            .is_some_and(|name| !map::ALL.contains(&name.to_string_lossy().as_ref()))
    });
    for path in strays.chain(stray_maps) {
        info!(pin = %path.display(), "unpinning what an older build left");
        fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
    }
    Ok(())
}

/// The shortcut attaches to the SOCKHASH itself. That attachment has no
/// link to pin; it lives as long as the map does, so the link object is
/// forgotten rather than dropped (dropping would detach it).
fn install_shortcut(ebpf: &mut Ebpf, pins: &Pins) -> Result<(), DatapathError> {
    let socks = ebpf.take_map(map::SOCKS).ok_or(DatapathError::MissingPin {
        name: map::SOCKS,
        path: pins.map(map::SOCKS),
    })?;
    let socks: SockHash<_, FlowKey> =
        SockHash::try_from(socks).map_err(DatapathError::map(map::SOCKS))?;
    let shortcut: &mut SkMsg = program_as(ebpf, program::SHORTCUT)?;
    shortcut.load().map_err(prog_err(program::SHORTCUT))?;
    let link = shortcut
        .attach(socks.fd())
        .map_err(|source| DatapathError::Attach {
            name: program::SHORTCUT,
            target: map::SOCKS.to_owned(),
            source,
        })?;
    let link = shortcut
        .take_link(link)
        .map_err(prog_err(program::SHORTCUT))?;
    mem::forget(link);
    let path = pins.prog(program::SHORTCUT);
    shortcut
        .pin(&path)
        .map_err(pin_err(program::SHORTCUT, path))
}

/// The guard attaches per pod, at enrollment; pinned so any later agent
/// can attach it without loading the object. Returns its fd.
fn install_guard(ebpf: &mut Ebpf, pins: &Pins) -> Result<aya::programs::ProgramFd, DatapathError> {
    let guard: &mut SchedClassifier = program_as(ebpf, program::GUARD)?;
    guard.load().map_err(prog_err(program::GUARD))?;
    let path = pins.prog(program::GUARD);
    guard.pin(&path).map_err(pin_err(program::GUARD, path))?;
    guard
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(prog_err(program::GUARD))
}

/// The inbound capture attaches per pod namespace, at enrollment; pinned
/// like the guard. Returns its fd.
fn install_inbound(
    ebpf: &mut Ebpf,
    pins: &Pins,
) -> Result<aya::programs::ProgramFd, DatapathError> {
    let inbound: &mut SkLookup = program_as(ebpf, program::INBOUND)?;
    inbound.load().map_err(prog_err(program::INBOUND))?;
    let path = pins.prog(program::INBOUND);
    inbound
        .pin(&path)
        .map_err(pin_err(program::INBOUND, path))?;
    inbound
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(prog_err(program::INBOUND))
}

/// Each pinned map whose shape differs from [`MAP_LAYOUTS`], with how.
fn layout_mismatches(pins: &Pins) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for want in MAP_LAYOUTS {
        let path = pins.map(want.name);
        if !path.exists() {
            continue;
        }
        let Ok(info) = MapInfo::from_pin(&path) else {
            found.push((want.name, "cannot be read".to_owned()));
            continue;
        };
        let have = (info.key_size(), info.value_size(), info.max_entries());
        if have != (want.key_size, want.value_size, want.max_entries) {
            found.push((
                want.name,
                format!(
                    "key {} value {} max {} pinned, key {} value {} max {} expected",
                    have.0, have.1, have.2, want.key_size, want.value_size, want.max_entries
                ),
            ));
        }
    }
    found
}

/// The object hash recorded in the pinned META map.
pub(super) fn installed_object(pins: &Pins) -> Option<u64> {
    let data = MapData::from_pin(pins.map(map::META)).ok()?;
    let meta: Array<_, u64> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    meta.get(&0, 0).ok().filter(|h| *h != 0)
}

/// Records which object's programs are installed.
pub(super) fn record_object(pins: &Pins, hash: u64) -> Result<(), DatapathError> {
    let data = MapData::from_pin(pins.map(map::META)).map_err(DatapathError::map(map::META))?;
    let mut meta: Array<_, u64> =
        Array::try_from(aya::maps::Map::Array(data)).map_err(DatapathError::map(map::META))?;
    meta.set(0, hash, 0).map_err(DatapathError::map(map::META))
}

fn load_cgroup_program(prog: &mut Program) -> Result<(), ProgramError> {
    match prog {
        Program::CgroupSockAddr(p) => p.load(),
        Program::SockOps(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
}

/// Loads a cgroup program and attaches it through a pinned link. The attach
/// type follows from which program it is.
fn attach_to_cgroup(
    name: &str,
    prog: &mut Program,
    cgroup: &fs::File,
    pin: &Path,
) -> Result<(), ProgramError> {
    let attach_type = match name {
        program::CONNECT4 => link::attach_type::CGROUP_INET4_CONNECT,
        program::CONNECT6 => link::attach_type::CGROUP_INET6_CONNECT,
        program::SOCK_OPS => link::attach_type::CGROUP_SOCK_OPS,
        program::GETSOCKOPT => link::attach_type::CGROUP_GETSOCKOPT,
        program::SENDMSG4 => link::attach_type::CGROUP_UDP4_SENDMSG,
        program::RECVMSG4 => link::attach_type::CGROUP_UDP4_RECVMSG,
        program::SENDMSG6 => link::attach_type::CGROUP_UDP6_SENDMSG,
        program::RECVMSG6 => link::attach_type::CGROUP_UDP6_RECVMSG,
        program::GETPEERNAME4 => link::attach_type::CGROUP_INET4_GETPEERNAME,
        program::GETPEERNAME6 => link::attach_type::CGROUP_INET6_GETPEERNAME,
        _ => return Err(ProgramError::UnexpectedProgramType),
    };
    load_cgroup_program(prog)?;
    let prog_fd = prog.fd()?;
    link::attach_cgroup_pinned(prog_fd.as_fd(), cgroup.as_fd(), attach_type, pin).map_err(
        |io_error| {
            ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_link_create + bpf_obj_pin",
                io_error,
            })
        },
    )
}

fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into().map_err(prog_err(name))
}

fn pin_err(name: &'static str, path: PathBuf) -> impl FnOnce(aya::pin::PinError) -> DatapathError {
    move |source| DatapathError::Pin {
        what: format!("program {name}"),
        path,
        source,
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

fn inbound_links(pins: &Pins) -> Result<Vec<PathBuf>, DatapathError> {
    Ok(pin_files(&pins.links_dir())?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(INBOUND_LINK_PREFIX))
        })
        .collect())
}

fn guard_links(pins: &Pins) -> Result<Vec<PathBuf>, DatapathError> {
    Ok(pin_files(&pins.links_dir())?
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("guard_"))
        })
        .collect())
}

fn pin_files(dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()).map(|e| e.path()).collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(DatapathError::io("reading", dir)(err)),
    }
}

/// Unpins every link and program: detaches the cgroup programs and the
/// guards. Maps are left alone.
pub fn remove_programs(pins: &Pins) -> Result<(), DatapathError> {
    for dir in [pins.links_dir(), pins.progs_dir()] {
        for path in pin_files(&dir)? {
            fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
        }
    }
    Ok(())
}

/// Unpins every map; the kernel frees them once no program uses them.
fn remove_maps(pins: &Pins) -> Result<(), DatapathError> {
    for path in pin_files(&pins.maps_dir())? {
        fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
    }
    Ok(())
}

/// Removes everything: programs, links, maps and the pin folder. The
/// sk_msg attachment goes with the SOCKHASH it is attached to.
pub fn uninstall(pins: &Pins) -> Result<(), DatapathError> {
    remove_programs(pins)?;
    match fs::remove_dir_all(pins.root()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(DatapathError::io("removing", pins.root())(err))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cgroup_v2_folder_is_taken_for_one() {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("mounts");
        let cgroup2 = mounts
            .lines()
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_owned())
            })
            .next()
            .expect("a cgroup v2 mount (cargo xtask setup mounts one)");
        assert!(is_cgroup2(&fs::File::open(&cgroup2).unwrap()), "{cgroup2}");
        assert!(!is_cgroup2(&fs::File::open(std::env::temp_dir()).unwrap()));
    }
}
