//! Enrolling pods: telling the kernel programs which network namespaces to
//! capture, and guarding their veths.

use std::{
    ffi::CString,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, SchedClassifier, SkLookup, TcAttachType, links::FdLink, tc::TcAttachOptions,
};
use warren_ebpf_common::{EnrolledPod, IFNAME_LEN, Mode, POD_NAME_LEN, program};

use super::{DatapathError, pins::Pins};

/// What the datapath needs to know about a pod to capture it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEnrollment {
    /// `namespace/name`, for errors and for `warrenctl bpf pods`.
    pub name: String,
    /// The pod's network namespace (e.g. `/run/netns/…` or `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The pod's IPv4 address, if it has one.
    pub ip4: Option<Ipv4Addr>,
    /// The node-side end of the pod's veth, in the node's namespace, if the
    /// STRICT guard should watch it.
    pub host_veth: Option<String>,
    pub mode: Mode,
    /// Ports whose inbound mode differs from `mode` (PeerAuthentication
    /// `portLevelMtls`).
    pub port_modes: Vec<(u16, Mode)>,
    /// Destination ports this pod keeps out of the mesh
    /// (`warren.io/exclude-outbound-ports`).
    pub excluded_ports: Vec<u16>,
}

/// The network-namespace cookie the kernel programs see for sockets made in
/// `netns`: asked of a socket made there (`SO_NETNS_COOKIE`).
pub fn netns_cookie(netns: &Path) -> Result<u64, DatapathError> {
    crate::netns::run_in(netns, socket_netns_cookie)
        .and_then(|cookie| cookie)
        .map_err(DatapathError::io("reading SO_NETNS_COOKIE in", netns))
}

/// `SO_NETNS_COOKIE` of a socket made in the calling thread's namespace.
fn socket_netns_cookie() -> std::io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The `EnrolledPod` value for a pod.
pub(super) fn enrolled_value(pod: &PodEnrollment, ifindex: u32) -> EnrolledPod {
    let mut name = [0u8; POD_NAME_LEN];
    let bytes = pod.name.as_bytes();
    let len = bytes.len().min(POD_NAME_LEN);
    name[..len].copy_from_slice(&bytes[..len]);
    let mut ifname = [0u8; IFNAME_LEN];
    if let Some(veth) = &pod.host_veth {
        let bytes = veth.as_bytes();
        let len = bytes.len().min(IFNAME_LEN - 1);
        ifname[..len].copy_from_slice(&bytes[..len]);
    }
    EnrolledPod {
        name,
        ip4: pod.ip4.map_or(0, |ip| u32::from(ip).to_be()),
        ifindex,
        mode: pod.mode as u32,
        _pad: 0,
        ifname,
    }
}

/// The ifindex of `veth` in the calling thread's network namespace.
pub(super) fn ifindex(pod: &str, veth: &str) -> Result<u32, DatapathError> {
    let name = CString::new(veth).map_err(|_| DatapathError::Pod {
        pod: pod.into(),
        reason: format!("interface name {veth:?} contains a NUL byte"),
    })?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(DatapathError::Pod {
            pod: pod.into(),
            reason: format!(
                "no interface {veth} in this network namespace (the agent must run in the node's namespace)"
            ),
        });
    }
    Ok(index)
}

/// Attaches the pinned guard program to `veth`'s egress (towards the pod)
/// and pins the link, unless an earlier agent already did.
pub(super) fn attach_guard(pins: &Pins, pod: &str, veth: &str) -> Result<(), DatapathError> {
    let link_path = pins.guard_link(veth);
    if link_path.exists() {
        // Adopt it only if it guards this very interface: a pin left by a
        // deleted pod whose veth name came back would otherwise leave the
        // new pod unguarded.
        let ifindex = ifindex(pod, veth)?;
        if super::link::tcx_link_ifindex(&link_path).is_ok_and(|i| i == ifindex) {
            return Ok(());
        }
        std::fs::remove_file(&link_path)
            .map_err(DatapathError::io("removing stale pin", &link_path))?;
    }
    let mut guard = SchedClassifier::from_pin(pins.prog(program::GUARD)).map_err(|source| {
        DatapathError::Program {
            name: program::GUARD,
            source,
        }
    })?;
    let attach = |source| DatapathError::Attach {
        name: program::GUARD,
        target: format!("{veth} (pod {pod})"),
        source,
    };
    let id = guard
        .attach_with_options(
            veth,
            TcAttachType::Egress,
            // First in the chain: a program before it that returned "pass"
            // would skip the guard.
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(attach)?;
    let link: FdLink = guard.take_link(id).map_err(attach)?.try_into().map_err(
        |e: aya::programs::links::LinkError| DatapathError::Pod {
            pod: pod.into(),
            reason: format!(
                "the guard on {veth} is not a TCX link ({e}); TCX needs Linux 6.6 or newer"
            ),
        },
    )?;
    link.pin(&link_path).map_err(|source| DatapathError::Pin {
        what: format!("guard link on {veth}"),
        path: link_path,
        source,
    })?;
    Ok(())
}

/// Attaches the pinned inbound capture to the pod's network namespace and
/// pins the link (named by the namespace's cookie, which no other namespace
/// ever has), unless an earlier agent already did.
pub(super) fn attach_inbound(
    pins: &Pins,
    pod: &str,
    netns: &Path,
    cookie: u64,
) -> Result<(), DatapathError> {
    let link_path = pins.inbound_link(cookie);
    if link_path.exists() {
        return Ok(());
    }
    let mut inbound = SkLookup::from_pin(pins.prog(program::INBOUND)).map_err(|source| {
        DatapathError::Program {
            name: program::INBOUND,
            source,
        }
    })?;
    let namespace =
        std::fs::File::open(netns).map_err(DatapathError::io("opening the namespace", netns))?;
    let attach = |source| DatapathError::Attach {
        name: program::INBOUND,
        target: format!("{} (pod {pod})", netns.display()),
        source,
    };
    let id = inbound.attach(&namespace).map_err(attach)?;
    let link: FdLink = inbound.take_link(id).map_err(attach)?.into();
    link.pin(&link_path).map_err(|source| DatapathError::Pin {
        what: format!("inbound capture of pod {pod}"),
        path: link_path,
        source,
    })?;
    Ok(())
}

/// Detaches the inbound capture of the pod namespace with this cookie.
pub(super) fn detach_inbound(pins: &Pins, cookie: u64) -> Result<(), DatapathError> {
    let path = pins.inbound_link(cookie);
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(DatapathError::io("unpinning", &path)(err))
        }
        _ => Ok(()),
    }
}

/// Detaches the guards on interface `ifindex`, and any whose interface is
/// gone (unpinning a link detaches it). Found by what the kernel says each
/// link is attached to, so it works after the veth itself was deleted.
pub(super) fn detach_guards(pins: &Pins, ifindex: u32) -> Result<(), DatapathError> {
    let dir = pins.links_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(DatapathError::io("reading", &dir)(err)),
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let path = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("guard_") {
            continue;
        }
        let attached = super::link::tcx_link_ifindex(&path).unwrap_or(0);
        if attached == ifindex || attached == 0 {
            match std::fs::remove_file(&path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DatapathError::io("unpinning", &path)(err));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
