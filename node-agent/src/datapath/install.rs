//! Loading the object, attaching its programs and pinning everything, or
//! adopting what an earlier agent pinned.

use std::{fs, mem, os::fd::AsFd as _};

use aya::{
    EbpfLoader,
    maps::SockHash,
    programs::{Program, ProgramError, SchedClassifier, SkMsg},
};
use tracing::{info, warn};
use warren_ebpf_common::{FlowKey, map, program};

use super::{DatapathError, link, object, pins::Pins};

/// What installing found: a fresh installation or one to adopt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Nothing was there: programs loaded, attached and pinned now.
    Fresh,
    /// A complete set of pins was there: adopted as is, nothing attached
    /// twice.
    Adopted,
}

/// Programs whose pins must all exist for an installation to be complete.
fn expected_pins(pins: &Pins) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = program::CGROUP.iter().map(|p| pins.link(p)).collect();
    paths.push(pins.prog(program::SHORTCUT));
    paths.push(pins.prog(program::GUARD));
    paths
}

/// Installs the datapath on the cgroup subtree `cgroup`, or adopts a complete
/// earlier installation pinned under `pins`. Maps are reused either way, so
/// enrolled pods and counters survive an agent restart.
pub fn install(pins: &Pins, cgroup: &std::path::Path) -> Result<Installed, DatapathError> {
    for dir in [pins.maps_dir(), pins.links_dir(), pins.progs_dir()] {
        fs::create_dir_all(&dir).map_err(DatapathError::io("creating pin folder", &dir))?;
    }
    let expected = expected_pins(pins);
    let present = expected.iter().filter(|p| p.exists()).count();
    if present == expected.len() {
        info!(pins = %pins.root().display(), "adopting the installed datapath");
        return Ok(Installed::Adopted);
    }
    if present > 0 {
        // An install that died halfway: start its programs over, keep maps.
        warn!(pins = %pins.root().display(), present, "incomplete installation found; reinstalling programs");
        remove_programs(pins)?;
    }

    let cgroup_fd = fs::File::open(cgroup).map_err(DatapathError::io("opening cgroup", cgroup))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pins.maps_dir())
        .load(object::bytes()?)
        .map_err(DatapathError::Load)?;

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

    // The shortcut attaches to the SOCKHASH itself. That attachment has no
    // link to pin; it lives as long as the map does, so the link object is
    // forgotten rather than dropped (dropping would detach it).
    let socks = ebpf.take_map(map::SOCKS).ok_or(DatapathError::MissingPin {
        name: map::SOCKS,
        path: pins.map(map::SOCKS),
    })?;
    let socks: SockHash<_, FlowKey> =
        SockHash::try_from(socks).map_err(DatapathError::map(map::SOCKS))?;
    let shortcut: &mut SkMsg = program_as(&mut ebpf, program::SHORTCUT)?;
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
        .map_err(pin_err(program::SHORTCUT, path))?;

    // The guard attaches per pod, at enrollment; pin it so any later agent
    // can attach it without loading the object.
    let guard: &mut SchedClassifier = program_as(&mut ebpf, program::GUARD)?;
    guard.load().map_err(prog_err(program::GUARD))?;
    let path = pins.prog(program::GUARD);
    guard.pin(&path).map_err(pin_err(program::GUARD, path))?;

    info!(pins = %pins.root().display(), cgroup = %target, "datapath installed");
    Ok(Installed::Fresh)
}

/// Loads a cgroup program and attaches it through a pinned link. The attach
/// type follows from which program it is.
fn attach_to_cgroup(
    name: &str,
    prog: &mut Program,
    cgroup: &fs::File,
    pin: &std::path::Path,
) -> Result<(), ProgramError> {
    let attach_type = match name {
        program::CONNECT4 => link::attach_type::CGROUP_INET4_CONNECT,
        program::CONNECT6 => link::attach_type::CGROUP_INET6_CONNECT,
        program::SOCK_OPS => link::attach_type::CGROUP_SOCK_OPS,
        program::GETSOCKOPT => link::attach_type::CGROUP_GETSOCKOPT,
        _ => return Err(ProgramError::UnexpectedProgramType),
    };
    match prog {
        Program::CgroupSockAddr(p) => p.load()?,
        Program::SockOps(p) => p.load()?,
        Program::CgroupSockopt(p) => p.load()?,
        _ => return Err(ProgramError::UnexpectedProgramType),
    }
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

fn program_as<'a, T>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into().map_err(prog_err(name))
}

fn pin_err(
    name: &'static str,
    path: std::path::PathBuf,
) -> impl FnOnce(aya::pin::PinError) -> DatapathError {
    move |source| DatapathError::Pin {
        what: format!("program {name}"),
        path,
        source,
    }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

/// Unpins every link and program: detaches the cgroup programs and the
/// guards. Maps are left alone.
pub fn remove_programs(pins: &Pins) -> Result<(), DatapathError> {
    for dir in [pins.links_dir(), pins.progs_dir()] {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(DatapathError::io("reading", &dir)(err)),
        };
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(DatapathError::io("unpinning", &path))?;
        }
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
