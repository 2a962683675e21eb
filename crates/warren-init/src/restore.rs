//! The restore helper: the node runs the init binary as `warren-restore`
//! in a private mount namespace (host root) to restore a checkpoint as a
//! new sandbox. It joins the sandbox's cgroups, builds the root CRIU
//! restores into — the image layers idmapped to the new sandbox's id
//! range under an overlay over the (shifted) copy of the writable layer —
//! binds the host trees the checkpoint names as external mounts, places
//! the descriptors the restored init inherits, and execs CRIU. CRIU's exit
//! status is the node's answer; a setup failure is reported on the
//! bootstrap socket first.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use warren_proto::{
    decode, encode, BootstrapReply, RestoreHelper, BOOTSTRAP_FD, MAX_MESSAGE_BYTES,
};
use warren_sys::mount::{bind_with_attrs, TreeAttrs};
use warren_sys::socket::{recv_with_fds, send_with_fds};

use crate::setup::{self, SetupError, Step};

pub fn main() -> i32 {
    let Ok(boot) = warren_sys::fd::adopt_inherited(BOOTSTRAP_FD) else {
        return 1;
    };
    let fail = |step: &str, errno: Option<nix::errno::Errno>, message: String| {
        let reply = BootstrapReply::Failed {
            step: step.to_string(),
            errno: errno.map(|e| e as i32),
            message,
        };
        if let Ok(b) = encode(&reply) {
            let _ = send_with_fds(boot.as_fd(), &b, &[]);
        }
        1
    };
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let (n, mut fds) = match recv_with_fds(boot.as_fd(), &mut buf) {
        Ok(v) => v,
        Err(e) => return fail("bootstrap", Some(e), "receive".into()),
    };
    let h: RestoreHelper = match decode(&buf[..n]) {
        Ok(h) => h,
        Err(e) => return fail("decode", None, e.to_string()),
    };
    if fds.len() != 1 + h.inherit_at.len() {
        return fail("fds", None, format!("got {} descriptors", fds.len()));
    }
    let inherited: Vec<OwnedFd> = fds.split_off(1);
    let userns = fds.pop().expect("length checked above");
    if let Err(e) = prepare(&h, &userns) {
        return fail(e.step, e.errno.map(nix::errno::Errno::from_raw), e.message);
    }
    drop(userns);
    for (fd, at) in inherited.into_iter().zip(&h.inherit_at) {
        if let Err(e) = warren_sys::fd::keep_at_inheritable(fd, *at) {
            return fail("inherit_fd", Some(e), format!("descriptor {at}"));
        }
    }
    let Ok(criu) = std::ffi::CString::new(h.criu.as_str()) else {
        return fail("exec_criu", None, "criu path has a NUL".into());
    };
    let mut argv = vec![criu.clone()];
    for a in &h.args {
        match std::ffi::CString::new(a.as_str()) {
            Ok(c) => argv.push(c),
            Err(_) => return fail("exec_criu", None, "an argument has a NUL".into()),
        }
    }
    let env = [std::ffi::CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").expect("no NUL")];
    let e = nix::unistd::execve(&criu, &argv, &env).unwrap_err();
    fail("exec_criu", Some(e), h.criu.clone())
}

fn prepare(h: &RestoreHelper, userns: &OwnedFd) -> Result<(), SetupError> {
    for p in &h.cgroup_procs {
        std::fs::write(p, "0").step("join_cgroup", p)?;
    }
    setup::make_private()?;
    nix::unistd::chdir(Path::new(&h.state_dir)).step("chdir_state", &h.state_dir)?;
    let lowers = setup::mount_lowers(&h.layers, userns)?;
    setup::mount_overlay(&lowers, "upper", "work")?;
    let ext = Path::new(&h.ext_root);
    mount(
        Some("tmpfs"),
        ext,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0711,size=65536"),
    )
    .step("mount_ext", &h.ext_root)?;
    for (source, name, readonly, idmapped) in &h.binds {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(nix::errno::Errno::EINVAL).step("mount_bind", name);
        }
        let target = ext.join(name);
        let is_dir = std::fs::metadata(source)
            .step("mount_bind", source)?
            .is_dir();
        if is_dir {
            std::fs::create_dir(&target).step("mount_bind", name)?;
        } else {
            std::fs::File::create(&target).step("mount_bind", name)?;
        }
        let attrs = TreeAttrs {
            readonly: *readonly,
            nosuid: true,
            nodev: true,
            idmap: idmapped.then(|| userns.as_fd()),
        };
        bind_with_attrs(Path::new(source), &target, attrs, is_dir).step("mount_bind", name)?;
    }
    Ok(())
}
