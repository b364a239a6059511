//! The local-user boundary of the build cache: every directory and file
//! pycage loads from it must be the current user's and writable by nobody
//! else.
//!
//! The cache holds native code that pycage maps and runs. A directory that
//! another local user created first (a squatted root), or can write to,
//! would let that user swap in code of their own; so such a directory is
//! refused, never used. Directories pycage creates are mode 0700, files
//! 0600 or less. Checks are made on open handles (`fstat`), so what is
//! checked is what is then read.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, Stat};

/// Why a cache path is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotPrivate {
    #[error("is owned by user {owner}, not by this user ({me}); refusing to use it")]
    Owner { owner: u32, me: u32 },
    #[error(
        "is writable by other users (mode {mode:04o}); refusing to use it: make it private \
         (chmod go-w) or use another cache directory"
    )]
    Writable { mode: u32 },
    #[error("is readable by other users (mode {mode:04o}); refusing to use it: chmod 600 it")]
    Readable { mode: u32 },
    #[error("is {0}, not a directory")]
    NotADirectory(&'static str),
    #[error("is a symbolic link, which pycage does not follow inside its cache")]
    Link,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Whether `stat` is the current user's and writable only by them.
pub(crate) fn check(stat: &Stat) -> Result<(), NotPrivate> {
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me {
        return Err(NotPrivate::Owner {
            owner: stat.st_uid,
            me,
        });
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(NotPrivate::Writable { mode });
    }
    Ok(())
}

/// Open the directory at `path` (following the path as the user named it:
/// the cache root may sit behind a link of the user's own) and check that
/// it is private.
pub(crate) fn open_root(path: &Path) -> Result<OwnedFd, NotPrivate> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)?;
    check(&rustix::fs::fstat(&fd).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Open the directory `name` (one component) in `parent` without following
/// a link, and check that it is private.
pub(crate) fn open_dir(parent: impl AsFd, name: &str) -> Result<OwnedFd, NotPrivate> {
    let parent = parent.as_fd();
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => NotPrivate::Link,
        // A link opened with O_DIRECTORY | O_NOFOLLOW fails as "not a
        // directory": say which it is.
        rustix::io::Errno::NOTDIR => {
            let is_link = rustix::fs::statat(parent, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
            if is_link {
                NotPrivate::Link
            } else {
                NotPrivate::NotADirectory("a file")
            }
        }
        other => NotPrivate::Io(other.into()),
    })?;
    check(&rustix::fs::fstat(&fd).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Open the regular file `name` in `parent` without following a link and
/// check that it is private; returns the handle and its metadata.
pub(crate) fn open_file(parent: impl AsFd, name: &str) -> Result<(OwnedFd, Stat), NotPrivate> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => NotPrivate::Link,
        other => NotPrivate::Io(other.into()),
    })?;
    let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(NotPrivate::NotADirectory("not a regular file"));
    }
    check(&stat)?;
    Ok((fd, stat))
}

/// As [`open_file`], and refused if anyone else may read it either: for
/// files that hold a secret or a tenant's data.
pub(crate) fn open_secret_file(
    parent: impl AsFd,
    name: &str,
) -> Result<(OwnedFd, Stat), NotPrivate> {
    let (fd, stat) = open_file(parent, name)?;
    if stat.st_mode & 0o077 != 0 {
        return Err(NotPrivate::Readable {
            mode: stat.st_mode & 0o7777,
        });
    }
    Ok((fd, stat))
}

/// Create the directory `path` and any missing parents, the new ones
/// private (0700); then open and check the last one, which may have
/// existed already.
pub(crate) fn create_dir_all(path: &Path) -> Result<OwnedFd, NotPrivate> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)?;
    open_root(path)
}

/// Write `bytes` as a new private file at `path` (mode 0600), creating
/// missing parent directories private (0700): whatever the umask, nobody
/// else can change what the cache holds.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)
}

/// Make every directory below `root` 0700 and every file 0600, not
/// following links: for trees that code other than the host wrote (the
/// standard-library export, made through WASI with the process umask).
pub(crate) fn restrict_tree(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link",
            root.display()
        )));
    }
    if meta.is_dir() {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            if entry.file_type()?.is_symlink() {
                std::fs::remove_file(entry.path())?;
            } else {
                restrict_tree(&entry.path())?;
            }
        }
    } else {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_private_directories_and_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let fd = create_dir_all(&root).unwrap();
        let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        std::fs::create_dir(root.join("shared")).unwrap();
        std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        assert!(matches!(
            open_dir(&fd, "shared"),
            Err(NotPrivate::Writable { mode: 0o777 })
        ));
        std::os::unix::fs::symlink(&root, root.join("link")).unwrap();
        assert!(matches!(open_dir(&fd, "link"), Err(NotPrivate::Link)));

        std::fs::write(root.join("file"), "x").unwrap();
        std::fs::set_permissions(root.join("file"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(open_file(&fd, "file").is_ok());
        std::fs::set_permissions(root.join("file"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        assert!(matches!(
            open_file(&fd, "file"),
            Err(NotPrivate::Writable { .. })
        ));

        // A directory of another user's is refused (only root can make one).
        if rustix::process::geteuid().is_root() {
            std::fs::create_dir(root.join("theirs")).unwrap();
            std::os::unix::fs::chown(root.join("theirs"), Some(65534), Some(65534)).unwrap();
            std::fs::set_permissions(root.join("theirs"), std::fs::Permissions::from_mode(0o700))
                .unwrap();
            assert!(matches!(
                open_dir(&fd, "theirs"),
                Err(NotPrivate::Owner { owner: 65534, .. })
            ));
        }

        // A root that is writable by others is refused, whoever made it.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(open_root(&root), Err(NotPrivate::Writable { .. })));
        assert!(matches!(
            create_dir_all(&root),
            Err(NotPrivate::Writable { .. })
        ));
    }
}
