//! Reading files that someone else controls: a tenant's handler tree (which
//! it may change while pycage reads it), an operator's virtualenv, and what
//! a guest wrote at build time.
//!
//! Every entry is opened exactly once, relative to its parent directory's
//! handle and without following symbolic links (`openat` with `O_NOFOLLOW`,
//! and `O_NONBLOCK` so that a FIFO opens at once instead of blocking); its
//! type, link count and size are read from the open handle (`fstat`), never
//! from a path; and every read stops at a bound fixed before it starts. A
//! tenant that swaps a file for a link, a FIFO or a sparse giant between
//! two of pycage's steps gains nothing: there is no second step by path.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, FileType, Mode, OFlags, Stat};

/// How an entry is opened: read-only, never through a link, never blocking
/// (a FIFO or a device opens at once and is then refused by its type),
/// never as a controlling terminal.
const ENTRY_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// A failure to read what someone else controls, naming the entry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// More files or bytes than the reader's bounds allow.
    #[error("{}: more than {limit}", path.display())]
    TooLarge { path: PathBuf, limit: String },
    /// The entry is a symbolic link, which is never followed.
    #[error("{}: is a symbolic link, which pycage does not follow", path.display())]
    Link { path: PathBuf },
    /// The entry exists but is not what was asked for (a FIFO, a device,
    /// a directory where a file was expected...).
    #[error("{}: is {found}, not {expected}", path.display())]
    WrongType {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
}

impl ReadError {
    fn io(path: &Path, source: impl Into<io::Error>) -> Self {
        let source = source.into();
        if source.raw_os_error() == Some(libc::ELOOP) {
            return ReadError::Link {
                path: path.to_path_buf(),
            };
        }
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What an open handle turned out to be.
pub(crate) enum Opened {
    Dir(OwnedFd),
    /// A regular file: opened, or only stat'ed (`stat_entry`).
    File {
        fd: Option<OwnedFd>,
        stat: Stat,
    },
    /// Something that is never read: the reason, for the report.
    Other(&'static str),
}

fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// Open `name` (one path component) in `dir` without following it, and
/// say what it is from the open handle.
fn open_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Opened> {
    let fd = match rfs::openat(dir, name, ENTRY_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Ok(Opened::Other("symbolic link (not followed)")),
        // A socket cannot be opened at all.
        Err(rustix::io::Errno::NXIO) => return Ok(Opened::Other("not a regular file")),
        Err(error) => return Err(error.into()),
    };
    let stat = rfs::fstat(&fd)?;
    Ok(match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => Opened::Dir(fd),
        FileType::RegularFile => Opened::File { fd: Some(fd), stat },
        _ => Opened::Other("not a regular file"),
    })
}

/// `open_entry` without opening a file: what `name` is, from `statat`
/// (not following a link); a directory is opened, to be walked.
fn stat_entry(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Opened> {
    let stat = rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => open_entry(dir, name),
        FileType::RegularFile => Ok(Opened::File { fd: None, stat }),
        FileType::Symlink => Ok(Opened::Other("symbolic link (not followed)")),
        _ => Ok(Opened::Other("not a regular file")),
    }
}

/// Open the file or directory the operator named. The path up to its last
/// component is the operator's own and resolves as usual; the last
/// component is the thing being granted, and is not followed if it is a
/// symbolic link (its target is named in the error, so the operator can
/// name it instead).
pub(crate) fn open_named(path: &Path) -> Result<(OwnedFd, Stat), ReadError> {
    let absolute = std::path::absolute(path).map_err(|e| ReadError::io(path, e))?;
    // `..` or `/` as the last component: there is no entry name to open
    // without following, so resolve the whole path first (it is then the
    // operator's directory, not a link).
    let (parent, name) = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name))
            if !matches!(
                absolute.components().next_back(),
                Some(Component::ParentDir)
            ) =>
        {
            (parent.to_path_buf(), name.to_owned())
        }
        _ => {
            let real = std::fs::canonicalize(&absolute).map_err(|e| ReadError::io(path, e))?;
            match (real.parent(), real.file_name()) {
                (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_owned()),
                // The root directory itself.
                _ => (real.clone(), OsStr::new(".").to_owned()),
            }
        }
    };
    let parent_fd = rfs::open(
        &parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ReadError::io(&parent, e))?;
    let cname = c_name(&name, path)?;
    match open_entry(parent_fd.as_fd(), &cname).map_err(|e| ReadError::io(path, e))? {
        Opened::Dir(fd) | Opened::File { fd: Some(fd), .. } => {
            let stat = rfs::fstat(&fd).map_err(|e| ReadError::io(path, e))?;
            Ok((fd, stat))
        }
        Opened::File { fd: None, .. } | Opened::Other(_) => Err(other_error(
            parent_fd.as_fd(),
            &cname,
            path.to_path_buf(),
            "a regular file or a directory",
        )),
    }
}

fn c_name(name: &OsStr, path: &Path) -> Result<CString, ReadError> {
    CString::new(name.as_bytes()).map_err(|_| ReadError::WrongType {
        path: path.to_path_buf(),
        found: "a name with a NUL byte",
        expected: "a file name",
    })
}

/// The type of the file behind `stat`.
pub(crate) fn file_type(stat: &Stat) -> FileType {
    FileType::from_raw_mode(stat.st_mode)
}

/// Read a regular file's whole contents from its open handle, refusing it
/// (from its size on the handle, before reading anything) if it is larger
/// than `max` bytes. A file that grows while being read is cut off at
/// `max + 1` bytes and refused too.
pub(crate) fn read_to_end(
    fd: OwnedFd,
    stat: &Stat,
    max: u64,
    path: &Path,
) -> Result<Vec<u8>, ReadError> {
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        limit: format_bytes(max),
    };
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > max {
        return Err(too_large());
    }
    let mut contents = Vec::with_capacity(size as usize);
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut contents)
        .map_err(|e| ReadError::io(path, e))?;
    if contents.len() as u64 > max {
        return Err(too_large());
    }
    Ok(contents)
}

/// Open the directory at `relative` below `dir`, one component at a time,
/// following no link on the way.
pub(crate) fn open_dir_at(
    dir: BorrowedFd<'_>,
    relative: &Path,
    shown_as: &Path,
) -> Result<OwnedFd, ReadError> {
    let mut current = rfs::openat(dir, c".", ENTRY_FLAGS, Mode::empty())
        .map_err(|e| ReadError::io(shown_as, e))?;
    let mut walked = shown_as.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(ReadError::WrongType {
                path: shown_as.to_path_buf(),
                found: "a path with `..`, `.` or a root",
                expected: "a relative path",
            });
        };
        walked.push(name);
        let cname = c_name(name, &walked)?;
        current =
            match open_entry(current.as_fd(), &cname).map_err(|e| ReadError::io(&walked, e))? {
                Opened::Dir(fd) => fd,
                Opened::File { .. } => {
                    return Err(ReadError::WrongType {
                        path: walked,
                        found: "a regular file",
                        expected: "a directory",
                    });
                }
                Opened::Other(_) => {
                    return Err(other_error(current.as_fd(), &cname, walked, "a directory"));
                }
            };
    }
    Ok(current)
}

fn other_error(
    dir: BorrowedFd<'_>,
    name: &CStr,
    path: PathBuf,
    expected: &'static str,
) -> ReadError {
    let found = rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
        .map(|s| FileType::from_raw_mode(s.st_mode))
        .unwrap_or(FileType::Unknown);
    if found == FileType::Symlink {
        ReadError::Link { path }
    } else {
        ReadError::WrongType {
            path,
            found: kind_name(found),
            expected,
        }
    }
}

/// Read the regular file at `relative` below `dir` (following no link on
/// the way), at most `max` bytes. `Ok(None)` if it does not exist.
pub(crate) fn read_file_at(
    dir: BorrowedFd<'_>,
    relative: &Path,
    max: u64,
    shown_as: &Path,
) -> Result<Option<Vec<u8>>, ReadError> {
    match open_file_at(dir, relative, shown_as)? {
        Some((fd, stat)) => read_to_end(fd, &stat, max, shown_as).map(Some),
        None => Ok(None),
    }
}

/// Copy the regular file at `relative` below `dir` (following no link on
/// the way) to `target` (created, not there before), streaming, refused
/// past `max` bytes (from its size on the handle, and while copying).
pub(crate) fn copy_file_at(
    dir: BorrowedFd<'_>,
    relative: &Path,
    max: u64,
    shown_as: &Path,
    target: &Path,
) -> Result<(), ReadError> {
    let (fd, stat) = open_file_at(dir, relative, shown_as)?
        .ok_or_else(|| ReadError::io(shown_as, io::Error::from(io::ErrorKind::NotFound)))?;
    let too_large = || ReadError::TooLarge {
        path: shown_as.to_path_buf(),
        limit: format_bytes(max),
    };
    if u64::try_from(stat.st_size).unwrap_or(u64::MAX) > max {
        return Err(too_large());
    }
    let mut out = File::options()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| ReadError::io(target, e))?;
    let copied = io::copy(&mut File::from(fd).take(max + 1), &mut out)
        .map_err(|e| ReadError::io(shown_as, e))?;
    if copied > max {
        drop(out);
        let _ = std::fs::remove_file(target);
        return Err(too_large());
    }
    Ok(())
}

/// Open the regular file at `relative` below `dir`, following no link on
/// the way; `Ok(None)` if it does not exist.
fn open_file_at(
    dir: BorrowedFd<'_>,
    relative: &Path,
    shown_as: &Path,
) -> Result<Option<(OwnedFd, Stat)>, ReadError> {
    let (parent, name) = match (relative.parent(), relative.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => {
            return Err(ReadError::WrongType {
                path: shown_as.to_path_buf(),
                found: "a directory",
                expected: "a regular file",
            });
        }
    };
    let parent_fd = match open_dir_at(dir, parent, shown_as) {
        Ok(fd) => fd,
        Err(ReadError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(other) => return Err(other),
    };
    let cname = c_name(name, shown_as)?;
    match open_entry(parent_fd.as_fd(), &cname) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ReadError::io(shown_as, error)),
        Ok(Opened::File { fd: Some(fd), stat }) => Ok(Some((fd, stat))),
        Ok(Opened::File { fd: None, .. }) => unreachable!("open_entry opens the files it finds"),
        Ok(Opened::Dir(_)) => Err(ReadError::WrongType {
            path: shown_as.to_path_buf(),
            found: "a directory",
            expected: "a regular file",
        }),
        Ok(Opened::Other(_)) => Err(other_error(
            parent_fd.as_fd(),
            &cname,
            shown_as.to_path_buf(),
            "a regular file",
        )),
    }
}

/// The regular file `name` in the directory `dir` (opened without
/// following a link in its last component), at most `max` bytes; `None`
/// if there is no such file.
pub(crate) fn read_file_in(dir: &Path, name: &str, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let (fd, _) = open_named(dir)?;
    read_file_at(fd.as_fd(), Path::new(name), max, &dir.join(name))
}

/// Bounds on one tree read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TreeLimits {
    /// Regular files taken.
    pub max_files: usize,
    /// Bytes of those files together.
    pub max_bytes: u64,
    /// Directory entries looked at, taken or not (a directory of millions
    /// of empty entries costs time even if nothing is taken).
    pub max_entries: usize,
    /// Nesting below the root.
    pub max_depth: usize,
}

/// What to do with one entry, decided from its relative path before it is
/// opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    Yes,
    /// Left out and not reported (caches, VCS metadata, installers).
    Quietly,
}

/// How a tree is read.
pub(crate) struct TreeRules<'a> {
    pub limits: TreeLimits,
    /// Whether files with more than one name (hard links) are taken. A
    /// tenant's directory may not grant a file that also lives elsewhere.
    pub hard_links: bool,
    /// `(relative path, is a directory)` → whether to take it.
    pub filter: &'a dyn Fn(&str, bool) -> Take,
    /// Read the files (`true`), or only stamp them: the same walk, the same
    /// files taken and skipped and the same bounds, but a file is looked at
    /// with one `statat` (no link followed) instead of being opened and
    /// read. For telling whether a tree changed since it was last read.
    pub contents: bool,
}

/// What the filesystem says of a file, without reading it: enough to tell
/// that it is the same file, never written since (any write moves its
/// ctime, which no one can set back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(stat: &Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime: (stat.st_mtime, stat.st_mtime_nsec as i64),
            ctime: (stat.st_ctime, stat.st_ctime_nsec as i64),
        }
    }
}

/// One regular file of a tree, relative to its root with '/' separators.
/// `contents` is empty when the tree was only stamped (`TreeRules::contents`).
#[derive(Debug, Clone)]
pub(crate) struct TreeFile {
    pub relative: String,
    pub contents: Vec<u8>,
    pub stamp: Stamp,
}

/// The files of a tree and the entries left out, with the reason.
#[derive(Debug, Default)]
pub(crate) struct TreeRead {
    pub files: Vec<TreeFile>,
    pub skipped: Vec<(String, &'static str)>,
}

struct Walk<'a> {
    rules: &'a TreeRules<'a>,
    root: &'a Path,
    read: TreeRead,
    bytes: u64,
    entries: usize,
}

/// Read every regular file below the directory `root` (an open handle),
/// within `rules`. `shown_as` is the root's path in errors. Files come out
/// sorted by relative path.
pub(crate) fn read_tree(
    root: BorrowedFd<'_>,
    rules: &TreeRules<'_>,
    shown_as: &Path,
) -> Result<TreeRead, ReadError> {
    let mut walk = Walk {
        rules,
        root: shown_as,
        read: TreeRead::default(),
        bytes: 0,
        entries: 0,
    };
    walk.dir(root, "", 0)?;
    walk.read.files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(walk.read)
}

impl Walk<'_> {
    fn too_large(&self) -> ReadError {
        let limits = &self.rules.limits;
        ReadError::TooLarge {
            path: self.root.to_path_buf(),
            limit: format!(
                "{} files, {} or {} directory entries",
                limits.max_files,
                format_bytes(limits.max_bytes),
                limits.max_entries
            ),
        }
    }

    fn dir(&mut self, dir: BorrowedFd<'_>, prefix: &str, depth: usize) -> Result<(), ReadError> {
        let shown = |relative: &str| self.root.join(relative);
        let mut names: Vec<(CString, FileType)> = Vec::new();
        let listing = rfs::Dir::read_from(dir).map_err(|e| ReadError::io(&shown(prefix), e))?;
        for entry in listing {
            let entry = entry.map_err(|e| ReadError::io(&shown(prefix), e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            self.entries += 1;
            if self.entries > self.rules.limits.max_entries {
                return Err(self.too_large());
            }
            names.push((name.to_owned(), entry.file_type()));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (cname, listed_type) in names {
            let Ok(name) = cname.to_str() else {
                let lossy = String::from_utf8_lossy(cname.to_bytes()).into_owned();
                self.read
                    .skipped
                    .push((format!("{prefix}{lossy}"), "file name is not UTF-8"));
                continue;
            };
            let relative = format!("{prefix}{name}");
            // The listing's type only spares opening what is never taken;
            // what is opened is judged again from its handle.
            let reason = match listed_type {
                FileType::Symlink => Some("symbolic link (not followed)"),
                FileType::Fifo
                | FileType::Socket
                | FileType::CharacterDevice
                | FileType::BlockDevice => Some("not a regular file"),
                _ => None,
            };
            if let Some(reason) = reason {
                if (self.rules.filter)(&relative, false) == Take::Yes {
                    self.read.skipped.push((relative, reason));
                }
                continue;
            }
            if listed_type == FileType::Directory
                && (self.rules.filter)(&relative, true) == Take::Quietly
            {
                continue;
            }
            let opened = if self.rules.contents || listed_type == FileType::Directory {
                open_entry(dir, &cname)
            } else {
                stat_entry(dir, &cname)
            }
            .map_err(|e| ReadError::io(&shown(&relative), e))?;
            match opened {
                Opened::Dir(fd) => {
                    if (self.rules.filter)(&relative, true) == Take::Quietly {
                        continue;
                    }
                    if depth + 1 > self.rules.limits.max_depth {
                        return Err(ReadError::TooLarge {
                            path: shown(&relative),
                            limit: format!("{} nested directories", self.rules.limits.max_depth),
                        });
                    }
                    self.dir(fd.as_fd(), &format!("{relative}/"), depth + 1)?;
                }
                Opened::File { fd, stat } => {
                    if (self.rules.filter)(&relative, false) == Take::Quietly {
                        continue;
                    }
                    if !self.rules.hard_links && stat.st_nlink > 1 {
                        self.read
                            .skipped
                            .push((relative, "hard link (the file has other names)"));
                        continue;
                    }
                    if self.read.files.len() >= self.rules.limits.max_files {
                        return Err(self.too_large());
                    }
                    let room = self.rules.limits.max_bytes.saturating_sub(self.bytes);
                    let stamp = Stamp::of(&stat);
                    let contents = match fd {
                        Some(fd) => match read_to_end(fd, &stat, room, &shown(&relative)) {
                            Ok(contents) => contents,
                            Err(ReadError::TooLarge { .. }) => return Err(self.too_large()),
                            Err(other) => return Err(other),
                        },
                        None if stamp.size > room => return Err(self.too_large()),
                        None => Vec::new(),
                    };
                    self.bytes += stamp.size.max(contents.len() as u64);
                    self.read.files.push(TreeFile {
                        relative,
                        contents,
                        stamp,
                    });
                }
                Opened::Other(reason) => {
                    if (self.rules.filter)(&relative, false) == Take::Yes {
                        self.read.skipped.push((relative, reason));
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`measure`] found below a directory someone else is writing to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measured {
    /// Bytes allocated on disk (sparse files count what they use).
    Bytes(u64),
    /// More entries or deeper nesting than allowed, or a directory that
    /// could not be opened: the writer is to be stopped, not trusted.
    Unbounded(&'static str),
}

/// Bytes allocated below `dir`, for a watcher bounding a writer that may be
/// hostile: no link is followed, at most `max_entries` entries and
/// `max_depth` levels are looked at (so at most `max_depth` directory
/// handles are open at once), the walk is iterative (no recursion for a
/// deep tree to overflow), and a directory that cannot be opened or read
/// (descriptors exhausted, say) counts as unbounded rather than as empty.
pub(crate) fn measure(dir: &Path, max_entries: usize, max_depth: usize) -> Measured {
    let Ok(root) = rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Measured::Bytes(0);
    };
    let Ok(listing) = rfs::Dir::read_from(&root) else {
        return Measured::Unbounded("an unreadable directory");
    };
    drop(root);
    // One open listing (one descriptor) per level.
    let mut stack: Vec<rfs::Dir> = vec![listing];
    let (mut total, mut entries) = (0u64, 0usize);
    loop {
        let depth = stack.len();
        let Some(listing) = stack.last_mut() else {
            break;
        };
        let Some(entry) = listing.next() else {
            stack.pop();
            continue;
        };
        let Ok(entry) = entry else {
            return Measured::Unbounded("an unreadable directory");
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries += 1;
        if entries > max_entries {
            return Measured::Unbounded("too many files");
        }
        let Ok(fd) = listing.fd() else {
            return Measured::Unbounded("an unreadable directory");
        };
        let stat = match rfs::statat(fd, name, rfs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            // Removed since it was listed.
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => return Measured::Unbounded("an unreadable entry"),
        };
        total += stat.st_blocks as u64 * 512;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            continue;
        }
        if depth >= max_depth {
            return Measured::Unbounded("too deeply nested directories");
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let sub = match rfs::openat(fd, name, flags, Mode::empty()) {
            Ok(sub) => sub,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(_) => return Measured::Unbounded("a directory that cannot be opened"),
        };
        let Ok(listing) = rfs::Dir::new(sub) else {
            return Measured::Unbounded("an unreadable directory");
        };
        stack.push(listing);
    }
    Measured::Bytes(total)
}

/// Delete the directory `dir` and everything below it, however deep, with
/// at most two directory handles open and no recursion: each
/// subdirectory's own subdirectories are first moved up into `dir` (links
/// are removed, never followed). For trees a guest wrote, which may be
/// deeper than any descriptor limit or stack allows, and for read-only
/// trees (each directory is made writable through its open handle, so a
/// link swapped in is never what changes mode).
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    let root = match rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    // Best effort: a directory this user does not own stays as it is.
    let _ = rfs::fchmod(&root, Mode::from_raw_mode(0o700));
    let mut moved = 0u64;
    // Each pass removes every entry it lists (moving grandchildren up); a
    // bound keeps a pathological tree from looping forever.
    for _ in 0..1_000_000 {
        let names = list(&root)?;
        if names.is_empty() {
            break;
        }
        for name in names {
            if !is_dir_at(&root, &name) {
                unlink(&root, &name, false)?;
                continue;
            }
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub = match rfs::openat(&root, &*name, flags, Mode::empty()) {
                Ok(sub) => sub,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(error) => return Err(error.into()),
            };
            let _ = rfs::fchmod(&sub, Mode::from_raw_mode(0o700));
            for inner in list(&sub)? {
                if is_dir_at(&sub, &inner) {
                    // Moving a directory to another parent rewrites its
                    // `..`: it must be writable (a read-only export's are not).
                    if let Ok(fd) = rfs::openat(&sub, &*inner, flags, Mode::empty()) {
                        let _ = rfs::fchmod(&fd, Mode::from_raw_mode(0o700));
                    }
                    moved += 1;
                    let aside = CString::new(format!(".moved-{moved}")).expect("no NUL");
                    rfs::renameat(&sub, &*inner, &root, &*aside)?;
                } else {
                    unlink(&sub, &inner, false)?;
                }
            }
            drop(sub);
            unlink(&root, &name, true)?;
        }
    }
    drop(root);
    std::fs::remove_dir(dir)
}

fn list(dir: &OwnedFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn is_dir_at(dir: &OwnedFd, name: &CStr) -> bool {
    rfs::statat(dir, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)
}

fn unlink(dir: &OwnedFd, name: &CStr, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        rfs::AtFlags::REMOVEDIR
    } else {
        rfs::AtFlags::empty()
    };
    match rfs::unlinkat(dir, name, flags) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        // Not empty after all (an entry appeared): the next pass gets it.
        Err(rustix::io::Errno::NOTEMPTY) if is_dir => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// `256 MiB`, `64 KiB`, `12 bytes`.
pub(crate) fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const LIMITS: TreeLimits = TreeLimits {
        max_files: 100,
        max_bytes: 1 << 20,
        max_entries: 1000,
        max_depth: 8,
    };

    fn read(root: &Path, limits: TreeLimits) -> Result<TreeRead, ReadError> {
        walk(root, limits, true)
    }

    fn walk(root: &Path, limits: TreeLimits, contents: bool) -> Result<TreeRead, ReadError> {
        let (fd, _) = open_named(root).unwrap();
        let rules = TreeRules {
            contents,
            limits,
            hard_links: false,
            filter: &|relative, is_dir| {
                if is_dir && relative.ends_with("__pycache__") {
                    Take::Quietly
                } else {
                    Take::Yes
                }
            },
        };
        read_tree(fd.as_fd(), &rules, root)
    }

    fn names(read: &TreeRead) -> Vec<&str> {
        read.files.iter().map(|f| f.relative.as_str()).collect()
    }

    /// Two files to take, a cache to leave out quietly, and a link to a
    /// host file, a link to a directory, a FIFO and a hard link to a file
    /// in `outside` to skip.
    fn mixed_tree(root: &Path, outside: &Path) {
        fs::create_dir_all(root.join("pkg/__pycache__")).unwrap();
        fs::write(root.join("app.py"), "x = 1").unwrap();
        fs::write(root.join("pkg/mod.py"), "y = 2").unwrap();
        fs::write(root.join("pkg/__pycache__/mod.pyc"), "junk").unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("pkg", root.join("pkg-link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            root.join("fifo"),
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        fs::hard_link(outside.join("secret"), root.join("linked")).unwrap();
    }

    #[test]
    fn takes_regular_files_and_reports_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let outside = tempfile::tempdir().unwrap();
        mixed_tree(root, outside.path());

        let read = read(root, LIMITS).unwrap();
        assert_eq!(names(&read), ["app.py", "pkg/mod.py"]);
        assert_eq!(read.files[1].contents, b"y = 2");
        let mut skipped: Vec<_> = read.skipped.iter().map(|(p, _)| p.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["fifo", "linked", "passwd", "pkg-link"]);
    }

    /// Stamping walks exactly what reading walks, with the same stamps and
    /// without reading a byte; a write moves the stamp.
    #[test]
    fn stamping_sees_what_reading_sees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let outside = tempfile::tempdir().unwrap();
        mixed_tree(root, outside.path());
        let stamps = |read: &TreeRead| -> Vec<(String, Stamp)> {
            read.files
                .iter()
                .map(|f| (f.relative.clone(), f.stamp))
                .collect()
        };
        let read = read(root, LIMITS).unwrap();
        let stamped = walk(root, LIMITS, false).unwrap();
        assert_eq!(stamps(&read), stamps(&stamped));
        assert_eq!(read.skipped, stamped.skipped);
        assert!(stamped.files.iter().all(|f| f.contents.is_empty()));
        assert_eq!(stamped.files[0].stamp.size, 5);

        // Same size, mtime put back: the ctime still moves.
        let before = stamped.files[1].stamp;
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(root.join("pkg/mod.py"), "y = 3").unwrap();
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::new(before.mtime.0 as u64, before.mtime.1 as u32);
        File::options()
            .write(true)
            .open(root.join("pkg/mod.py"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = walk(root, LIMITS, false).unwrap().files[1].stamp;
        assert_eq!((after.size, after.mtime), (before.size, before.mtime));
        assert_ne!(after, before);

        // The bounds hold without reading: a sparse giant is refused.
        File::create(root.join("sparse.bin"))
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        assert!(matches!(
            walk(root, LIMITS, false),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn sizes_are_checked_on_the_handle_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        // A sparse file far over the bound: refused from its size alone,
        // without reading (reading 64 GiB of zeros would take minutes).
        let sparse = File::create(dir.path().join("sparse.bin")).unwrap();
        sparse.set_len(64 << 30).unwrap();
        let started = std::time::Instant::now();
        let error = read(dir.path(), LIMITS).unwrap_err();
        assert!(matches!(error, ReadError::TooLarge { .. }), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        let (fd, stat) = open_named(&dir.path().join("sparse.bin")).unwrap();
        assert!(matches!(
            read_to_end(fd, &stat, 1 << 20, Path::new("sparse.bin")),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn counts_files_entries_and_depth() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..20 {
            fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let few = TreeLimits {
            max_files: 10,
            ..LIMITS
        };
        assert!(matches!(
            read(dir.path(), few),
            Err(ReadError::TooLarge { .. })
        ));
        let narrow = TreeLimits {
            max_entries: 10,
            ..LIMITS
        };
        assert!(matches!(
            read(dir.path(), narrow),
            Err(ReadError::TooLarge { .. })
        ));
        let deep = dir.path().join("a/b/c/d/e/f/g/h/i/j");
        fs::create_dir_all(&deep).unwrap();
        assert!(matches!(
            read(dir.path(), LIMITS),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_named_entry_itself_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("real.py"), "x").unwrap();
        symlink(dir.path().join("real.py"), dir.path().join("link.py")).unwrap();
        assert!(open_named(&dir.path().join("real.py")).is_ok());
        assert!(matches!(
            open_named(&dir.path().join("link.py")),
            Err(ReadError::Link { .. })
        ));
        // The operator's own path components are followed.
        symlink(dir.path(), dir.path().join("via")).unwrap();
        assert!(open_named(&dir.path().join("via/real.py")).is_ok());
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            open_named(&dir.path().join("fifo")),
            Err(ReadError::WrongType { .. })
        ));
        // `..` as the last component names a directory.
        fs::create_dir(dir.path().join("x")).unwrap();
        let (_, stat) = open_named(&dir.path().join("x/..")).unwrap();
        assert_eq!(file_type(&stat), FileType::Directory);
    }

    #[test]
    fn files_below_a_handle_are_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("out/report.json"), "{}").unwrap();
        symlink("/dev/zero", dir.path().join("out/zero")).unwrap();
        symlink("out", dir.path().join("alias")).unwrap();
        let (fd, _) = open_named(dir.path()).unwrap();
        let read =
            |relative: &str| read_file_at(fd.as_fd(), Path::new(relative), 16, Path::new(relative));
        assert_eq!(read("out/report.json").unwrap().unwrap(), b"{}");
        assert!(read("out/missing").unwrap().is_none());
        assert!(matches!(read("out/zero"), Err(ReadError::Link { .. })));
        assert!(matches!(
            read("alias/report.json"),
            Err(ReadError::Link { .. })
        ));
        assert!(matches!(read("../x/y"), Err(ReadError::WrongType { .. })));
        fs::write(dir.path().join("out/big"), vec![b'x'; 17]).unwrap();
        assert!(matches!(read("out/big"), Err(ReadError::TooLarge { .. })));
    }

    /// A tree deeper than any stack or descriptor limit (a guest builds one
    /// with mkdir and rename) is measured within bounds and removed.
    #[test]
    fn deep_trees_are_measured_within_bounds_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("top.bin"), vec![1u8; 100_000]).unwrap();
        // 3,000 levels, built the way a guest would: rename the tree into a
        // new directory, again and again.
        fs::create_dir(root.join("d0")).unwrap();
        fs::write(root.join("d0/leaf"), b"x").unwrap();
        for i in 1..3000 {
            fs::create_dir(root.join(format!("d{i}"))).unwrap();
            fs::rename(
                root.join(format!("d{}", i - 1)),
                root.join(format!("d{i}/x")),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink("/", root.join("d2999/link")).unwrap();
        assert_eq!(
            measure(&root, 100_000, 64),
            Measured::Unbounded("too deeply nested directories")
        );
        match measure(&root, 100_000, 10_000) {
            Measured::Bytes(bytes) => assert!(bytes >= 100_000, "{bytes}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            measure(&root, 100, 10_000),
            Measured::Unbounded("too many files")
        );
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        // The link's target was not touched.
        assert!(Path::new("/etc").is_dir());
        remove_tree(&root).unwrap(); // already gone: fine
    }

    #[test]
    fn remove_tree_empties_read_only_trees_and_leaves_link_targets_alone() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), "x").unwrap();
        let root = scratch.path().join("tree");
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/b/link")).unwrap();
        for dir in ["a/b/c", "a/b", "a", ""] {
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o555)).unwrap();
        }
        let mode = || fs::metadata(&outside).unwrap().permissions().mode();
        let before = mode();
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(outside.join("keep").is_file());
        assert_eq!(mode(), before, "a link's target keeps its mode");
    }
}
