//! Files lab writes, often as root, without ever writing through a path that someone else
//! controls.
//!
//! - A directory is opened with `O_NOFOLLOW`, so a symlink in its place is refused, and
//!   refused too if anyone but root or the invoking user owns it, or if its group or
//!   others may write in it (a shared directory such as /tmp, where anyone can plant a
//!   name). Missing directories are created, mode 0755.
//! - Every file is written through the directory's descriptor: [`SafeDir::write`] writes
//!   a new temporary file (`O_EXCL | O_NOFOLLOW`) and renames it over the name, which
//!   replaces a symlink there rather than its target; [`SafeDir::create_new`] refuses a
//!   name that exists.
//! - [`SafeDir::give_to`] hands a tree to the user behind sudo, never following a link.

use anyhow::{Context, Result, bail};
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// The user lab works for: the one behind sudo (SUDO_UID, SUDO_GID) when lab runs as
/// root through sudo, otherwise the process's own.
pub fn invoking_user() -> (u32, u32) {
    let id = |k| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    if uid == 0
        && let (Some(u), Some(g)) = (id("SUDO_UID"), id("SUDO_GID"))
    {
        return (u, g);
    }
    (uid, gid)
}

/// A directory that only root or the invoking user can write in, held open.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl SafeDir {
    /// Opens `path`, creating it and its missing parents (mode 0755) if `create`.
    pub fn open(path: &Path, create: bool) -> Result<SafeDir> {
        if create {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(p) = parent {
                std::fs::create_dir_all(p)
                    .with_context(|| format!("cannot create {}", p.display()))?;
            }
            match nix::unistd::mkdir(path, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
        }
        let fd = nix::fcntl::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            match e {
                _ if link => anyhow::anyhow!(
                    "refusing to write into {}: it is a symbolic link, and lab never writes through a link it did not make; give the real directory",
                    path.display()
                ),
                nix::errno::Errno::ENOTDIR => {
                    anyhow::anyhow!("{} is not a directory", path.display())
                }
                e => anyhow::anyhow!("cannot open {}: {e}", path.display()),
            }
        })?;
        let dir = SafeDir {
            fd,
            path: path.to_owned(),
        };
        dir.check()?;
        Ok(dir)
    }

    fn check(&self) -> Result<()> {
        let st = fstat(&self.fd).with_context(|| format!("cannot stat {}", self.path.display()))?;
        let (me, _) = invoking_user();
        let uid = nix::unistd::getuid().as_raw();
        if st.st_uid != 0 && st.st_uid != me && st.st_uid != uid {
            bail!(
                "refusing to write into {}: it belongs to user {}, not to root or you; give a directory of your own (one that does not exist yet is made)",
                self.path.display(),
                st.st_uid
            );
        }
        if st.st_mode & 0o022 != 0 {
            bail!(
                "refusing to write into {}: others can write in it (mode {:o}), so anyone could plant a file or link there; give a directory only you can write (one that does not exist yet is made)",
                self.path.display(),
                st.st_mode & 0o7777
            );
        }
        Ok(())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn name(name: &str) -> Result<&str> {
        let mut c = Path::new(name).components();
        match (c.next(), c.next()) {
            (Some(Component::Normal(_)), None) => Ok(name),
            _ => bail!("'{name}' is not a plain file name"),
        }
    }

    /// The subdirectory `name`, created (0755) if missing; never a symlink.
    pub fn subdir(&self, name: &str) -> Result<SafeDir> {
        let name = Self::name(name)?;
        let path = self.path.join(name);
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
        let fd = openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => anyhow::anyhow!(
                "refusing to write into {}: it is not a directory (a symbolic link lab did not make?)",
                path.display()
            ),
            e => anyhow::anyhow!("cannot open {}: {e}", path.display()),
        })?;
        let dir = SafeDir { fd, path };
        dir.check()?;
        Ok(dir)
    }

    /// A new subdirectory: `name`, or `name-2`, `name-3`, ... if that exists. Returns it
    /// and the name it got.
    pub fn new_subdir(&self, name: &str) -> Result<(SafeDir, String)> {
        let name = Self::name(name)?;
        for n in 1..1000 {
            let candidate = if n == 1 {
                name.to_owned()
            } else {
                format!("{name}-{n}")
            };
            match mkdirat(
                &self.fd,
                candidate.as_str(),
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) => return Ok((self.subdir(&candidate)?, candidate)),
                Err(nix::errno::Errno::EEXIST) => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create {}", self.path.join(&candidate).display())
                    });
                }
            }
        }
        bail!("{}: too many directories named {name}", self.path.display())
    }

    /// Creates `name` as a new file with `mode` and opens it for writing. Anything already
    /// there, a symlink included, is an error.
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File> {
        let name = Self::name(name)?;
        let path = self.path.join(name);
        let fd = openat(
            &self.fd,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
        // The umask may have narrowed the mode; the file is ours, set it exactly.
        fchmod(&fd, Mode::from_bits_truncate(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
        Ok(File::from(fd))
    }

    /// Copies every regular file of `from` into this directory, each cut to its last
    /// `max` bytes, mode 0644; links and anything else are skipped, never followed. The
    /// names copied, sorted.
    pub fn copy_files_from(&self, from: &SafeDir, max: u64) -> Result<Vec<String>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{}", raw(&from.fd)))
            .with_context(|| format!("cannot list {}", from.path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        let mut copied = Vec::new();
        for name in names {
            let Ok(fd) = openat(
                &from.fd,
                name.as_str(),
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            ) else {
                continue;
            };
            let mut f = File::from(fd);
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if !f.metadata().is_ok_and(|m| m.is_file()) {
                continue;
            }
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
            let mut data = Vec::new();
            f.take(max)
                .read_to_end(&mut data)
                .with_context(|| format!("cannot read {}", from.path.join(&name).display()))?;
            self.write(&name, &data, 0o644)?;
            copied.push(name);
        }
        Ok(copied)
    }

    /// An unnamed file in this directory's filesystem (O_TMPFILE), readable and
    /// writable, mode 0600: scratch space that no one else can open and that vanishes
    /// when closed, even if lab is killed.
    pub fn scratch(&self) -> Result<File> {
        let fd = openat(
            &self.fd,
            ".",
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .with_context(|| format!("cannot make a scratch file in {}", self.path.display()))?;
        Ok(File::from(fd))
    }

    /// Whether something (a file, a directory, a link) is at `name` in this directory.
    pub fn has(&self, name: &str) -> bool {
        Self::name(name).is_ok_and(|n| {
            nix::sys::stat::fstatat(&self.fd, n, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
        })
    }

    /// Writes `data` to `name` with `mode`, atomically: a new temporary file in this
    /// directory, renamed over `name`. A symlink at `name` is replaced, not followed.
    pub fn write(&self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        let name = Self::name(name)?;
        let path = self.path.join(name);
        let tmp = format!(".{name}.{}.{}.tmp", std::process::id(), nonce());
        let mut f = self.create_new(&tmp, mode)?;
        let written = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
            .and_then(|()| {
                renameat(&self.fd, tmp.as_str(), &self.fd, name)
                    .with_context(|| format!("cannot write {}", path.display()))
            });
        if written.is_err() {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// Hands this directory and everything in it to `uid`:`gid` (the user behind sudo),
    /// never following a symlink.
    pub fn give_to(&self, uid: u32, gid: u32) -> Result<()> {
        let (u, g) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        // Children first: until the end, no one but root can write in this directory.
        for e in std::fs::read_dir(format!("/proc/self/fd/{}", raw(&self.fd)))
            .with_context(|| format!("cannot list {}", self.path.display()))?
        {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if e.file_type()?.is_dir() {
                self.subdir(name)?.give_to(uid, gid)?;
            } else {
                fchownat(
                    &self.fd,
                    name,
                    u,
                    g,
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .with_context(|| {
                    format!(
                        "cannot hand {} to user {uid}",
                        self.path.join(name).display()
                    )
                })?;
            }
        }
        nix::unistd::fchown(&self.fd, u, g)
            .with_context(|| format!("cannot hand {} to user {uid}", self.path.display()))
    }
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_fd().as_raw_fd()
}

/// A number unlikely to repeat, for temporary names (which are created with O_EXCL
/// anyway).
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    lab_codec::rng::SplitMix64::new(t ^ u64::from(std::process::id())).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lab-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn writes_replace_a_planted_link_and_never_touch_its_target() {
        let d = scratch("link");
        let dir = SafeDir::open(&d, true).unwrap();
        let target = d.with_extension("target");
        std::fs::write(&target, "important\n").unwrap();
        symlink(&target, d.join("key.pem")).unwrap();
        symlink(d.join("nowhere"), d.join("cert.pem")).unwrap();
        dir.write("key.pem", b"secret", 0o600).unwrap();
        dir.write("cert.pem", b"cert", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "important\n");
        assert!(!d.join("nowhere").exists(), "a dangling link made a file");
        let m = std::fs::symlink_metadata(d.join("key.pem")).unwrap();
        assert!(m.is_file() && m.permissions().mode() & 0o777 == 0o600);
        assert_eq!(std::fs::read(d.join("key.pem")).unwrap(), b"secret");
        // create_new refuses anything already there, a link above all.
        symlink(&target, d.join("x.pcap")).unwrap();
        assert!(dir.create_new("x.pcap", 0o644).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "important\n");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_file(&target).unwrap();
    }

    #[test]
    fn shared_linked_and_foreign_directories_are_refused() {
        let d = scratch("shared");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = SafeDir::open(&d, false).unwrap_err().to_string();
        assert!(e.contains("others can write in it (mode 1777)"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        SafeDir::open(&d, false).unwrap();
        let l = d.with_extension("link");
        let _ = std::fs::remove_file(&l);
        symlink(&d, &l).unwrap();
        let e = SafeDir::open(&l, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(SafeDir::open(&d, false).unwrap().subdir("../x").is_err());
        if nix::unistd::getuid().is_root() {
            std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
            let e = SafeDir::open(&d, false).unwrap_err().to_string();
            assert!(e.contains("belongs to user 65534"), "{e}");
            std::os::unix::fs::chown(&d, Some(0), Some(0)).unwrap();
        }
        std::fs::remove_file(&l).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn new_subdirs_get_a_fresh_name_and_trees_change_hands() {
        let d = scratch("subdir");
        let dir = SafeDir::open(&d, true).unwrap();
        let (_, a) = dir.new_subdir("run").unwrap();
        let (b, bn) = dir.new_subdir("run").unwrap();
        assert_eq!((a.as_str(), bn.as_str()), ("run", "run-2"));
        b.write("run.json", b"{}", 0o644).unwrap();
        let target = d.with_extension("t2");
        std::fs::write(&target, "x").unwrap();
        symlink(&target, b.path().join("link")).unwrap();
        if nix::unistd::getuid().is_root() {
            let before = std::fs::metadata(&target).unwrap().uid();
            dir.give_to(4242, 4242).unwrap();
            let m = std::fs::metadata(b.path().join("run.json")).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4242));
            assert_eq!(
                std::fs::metadata(&target).unwrap().uid(),
                before,
                "followed a link"
            );
            assert_eq!(
                std::fs::symlink_metadata(b.path().join("link"))
                    .unwrap()
                    .uid(),
                4242
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_file(&target).unwrap();
    }
}
