//! Pinned cgroup links, made with the `bpf()` syscall directly.
//!
//! aya 0.14 cannot hand out the link of a `cgroup/getsockopt` program for
//! pinning, and an unpinned link detaches when the agent exits. Creating
//! and pinning the link here takes two small syscalls and treats all four
//! cgroup programs the same way. The same goes for asking a pinned TCX link
//! which interface it is attached to, and swapping the program inside a
//! pinned link (`BPF_LINK_UPDATE`), which aya 0.14 does not expose.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `enum bpf_attach_type` values from the kernel UAPI.
pub(super) mod attach_type {
    pub const CGROUP_SOCK_OPS: u32 = 3;
    pub const CGROUP_INET4_CONNECT: u32 = 10;
    pub const CGROUP_INET6_CONNECT: u32 = 11;
    pub const CGROUP_UDP4_SENDMSG: u32 = 14;
    pub const CGROUP_UDP6_SENDMSG: u32 = 15;
    pub const CGROUP_UDP4_RECVMSG: u32 = 19;
    pub const CGROUP_UDP6_RECVMSG: u32 = 20;
    pub const CGROUP_GETSOCKOPT: u32 = 21;
    pub const CGROUP_INET4_GETPEERNAME: u32 = 29;
    pub const CGROUP_INET6_GETPEERNAME: u32 = 30;
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The `bpf_attr` union is large; both commands used here read only its
/// first bytes and require the rest to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn zeroed() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, offset: usize, v: u32) {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, v: u64) {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised bpf_attr-sized buffer laid out as
    // the command expects; the kernel reads at most its size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Attaches `prog` to the cgroup `cgroup` through a new link and pins the
/// link at `pin`. The link stays attached until the pin is removed.
pub(super) fn attach_cgroup_pinned(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
) -> io::Result<()> {
    // link_create: prog_fd u32 @0, target_fd u32 @4, attach_type u32 @8, flags u32 @12.
    let mut attr = Attr::zeroed();
    attr.put_u32(0, prog.as_raw_fd() as u32);
    attr.put_u32(4, cgroup.as_raw_fd() as u32);
    attr.put_u32(8, attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: on success BPF_LINK_CREATE returns a new fd that we own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    // obj_pin: pathname u64 @0, bpf_fd u32 @8, file_flags u32 @12.
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains a NUL byte"))?;
    let mut attr = Attr::zeroed();
    attr.put_u64(0, path.as_ptr() as u64);
    attr.put_u32(8, link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    // Closing our fd is fine: the pin holds the link.
    Ok(())
}

/// Opens the object pinned at `pin`.
fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    // obj_get: pathname u64 @0, bpf_fd u32 @8, file_flags u32 @12.
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pin path contains a NUL byte"))?;
    let mut attr = Attr::zeroed();
    attr.put_u64(0, path.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success BPF_OBJ_GET returns a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The ifindex a pinned TCX link is attached to; 0 once its interface is
/// gone (the kernel detaches the link then).
pub(super) fn tcx_link_ifindex(pin: &Path) -> io::Result<u32> {
    // The tcx member of the union: { ifindex u32 @16, attach_type }.
    let info = link_info(pin)?;
    Ok(u32::from_ne_bytes([info[16], info[17], info[18], info[19]]))
}

/// The cgroup a pinned cgroup link is attached to (the id, which is the
/// cgroup folder's inode number); 0 once that cgroup is gone.
pub(super) fn cgroup_link_id(pin: &Path) -> io::Result<u64> {
    // The cgroup member of the union: { cgroup_id u64 @16, attach_type }.
    let info = link_info(pin)?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&info[16..24]);
    Ok(u64::from_ne_bytes(id))
}

/// The `struct bpf_link_info` of the link pinned at `pin`: type u32 @0, id
/// u32 @4, prog_id u32 @8, then a union aligned to 8, per link type, @16.
fn link_info(pin: &Path) -> io::Result<[u8; 128]> {
    let link = obj_get(pin)?;
    let mut info = [0u8; 128];
    // obj_get_info_by_fd: bpf_fd u32 @0, info_len u32 @4, info u64 @8.
    let mut attr = Attr::zeroed();
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, info.len() as u32);
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info)
}

/// Swaps the program inside the link pinned at `pin` for `new_prog`,
/// atomically: the attachment never goes away, and the old and new
/// programs never both run.
pub(super) fn update_pinned_link(pin: &Path, new_prog: BorrowedFd<'_>) -> io::Result<()> {
    let link = obj_get(pin)?;
    // link_update: link_fd u32 @0, new_prog_fd u32 @4, flags u32 @8, old_prog_fd u32 @12.
    let mut attr = Attr::zeroed();
    attr.put_u32(0, link.as_raw_fd() as u32);
    attr.put_u32(4, new_prog.as_raw_fd() as u32);
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}
