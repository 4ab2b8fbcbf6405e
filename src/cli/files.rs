//! Reading manifests (files, directories, stdin) and writing files in place, for every command.

use super::*;

/// Files or directories of manifests, as `validate`, `keys` and `rewrap` take them.
#[derive(Debug, Args)]
pub struct ManifestPaths {
    /// Files or directories; a directory means every .yaml, .yml and .json file in it and
    /// below (hidden ones and symlinked directories skipped); `-` for stdin where the command
    /// reads.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// A file or directory, as with kubectl (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
}

impl ManifestPaths {
    /// Every path named (the positional ones first), or a usage error saying `hint`.
    pub(super) fn named(&self, hint: &str) -> Result<Vec<&PathBuf>, CliError> {
        let paths: Vec<&PathBuf> = self.paths.iter().chain(&self.files).collect();
        if paths.is_empty() {
            return Err(usage(hint));
        }
        Ok(paths)
    }
}

/// The manifest files a path stands for: `-` (stdin) itself, a file itself, a directory's
/// manifest files (see [`manifest_files`]).
pub(super) fn files_of(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if path == Path::new("-") {
        files.push(path.to_owned());
    } else {
        manifest_files(path, 0, &mut files)?;
    }
    Ok(files)
}

/// The EncryptedSecret manifests `verify` and `unseal` read, and the namespace for those that
/// name none.
#[derive(Debug, Args)]
pub struct EncryptedInput {
    /// EncryptedSecret manifest(s); `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// Namespace of the objects whose manifest names none (their values are bound to it).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// [`read_input`] with `io`'s stdin, saying so first when that is a terminal.
pub(super) fn read_manifest(path: &Path, io: &mut Io<'_>) -> Result<Zeroizing<String>, CliError> {
    if path == Path::new("-") && io.stdin_is_terminal {
        writeln!(
            io.stderr,
            "reading the manifest from stdin (end with Ctrl-D; or pass -f FILE)"
        )?;
    }
    read_input(path, io.stdin)
}

pub(super) fn read_input(path: &Path, stdin: &mut dyn Read) -> Result<Zeroizing<String>, CliError> {
    let (bytes, size) = read_capped(path, stdin)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    Ok(manifest_text(bytes, size)?)
}

/// The bytes of a file (or of stdin for `-`), read up to just over the manifest limit, and the
/// file's size where known. `Err` only for I/O failures.
pub(super) fn read_capped(
    path: &Path,
    stdin: &mut dyn Read,
) -> std::io::Result<(Vec<u8>, Option<u64>)> {
    let limit = manifest::MAX_INPUT_LEN as u64 + 1;
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        stdin.take(limit).read_to_end(&mut bytes)?;
        Ok((bytes, None))
    } else {
        let file = std::fs::File::open(path)?;
        let size = file.metadata().map(|m| m.len()).ok();
        file.take(limit).read_to_end(&mut bytes)?;
        Ok((bytes, size))
    }
}

/// [`manifest::text`], reporting a too-large file with its real size.
pub(super) fn manifest_text(
    bytes: Vec<u8>,
    size: Option<u64>,
) -> Result<Zeroizing<String>, manifest::ManifestError> {
    if bytes.len() > manifest::MAX_INPUT_LEN {
        let _ = Zeroizing::new(bytes);
        return Err(manifest::ManifestError::TooLarge(size));
    }
    manifest::text(bytes)
}

/// Replaces `path` without a window in which it is half written.
/// Replaces `path` whole, so a reader never sees half a file: the new contents go to a temp
/// file beside it, created new with a random name (never one that exists, never through a
/// symlink someone placed there), which then takes the file's place. A symlink at `path`
/// stays a symlink: the file it points to is replaced.
pub(super) fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), CliError> {
    let cannot = |e: &dyn std::fmt::Display| fail(format!("cannot write {}: {e}", path.display()));
    let target = match std::fs::canonicalize(path) {
        Ok(target) => target,
        // A new file: in its directory as it really is.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .ok_or_else(|| fail(format!("{} is not a file", path.display())))?;
            std::fs::canonicalize(dir)
                .map_err(|e| cannot(&e))?
                .join(name)
        }
        Err(e) => return Err(cannot(&e)),
    };
    let dir = target
        .parent()
        .ok_or_else(|| fail(format!("{} is not a file", path.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kmseal-")
        .tempfile_in(dir)
        .map_err(|e| cannot(&e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| cannot(&e))?;
    if let Ok(meta) = std::fs::metadata(&target) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.persist(&target).map_err(|e| cannot(&e.error))?;
    Ok(())
}

/// How deep `validate` walks into directories.
pub(super) const MAX_DIRECTORY_DEPTH: usize = 32;

/// The files `validate` checks for `path`: the path itself, or for a directory its manifest
/// files, sorted. Hidden entries and symlinked directories are skipped (no loops).
pub(super) fn manifest_files(
    path: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let is_dir = if depth == 0 {
        std::fs::metadata(path)?.is_dir()
    } else {
        std::fs::symlink_metadata(path)?.is_dir()
    };
    if !is_dir {
        out.push(path.to_owned());
        return Ok(());
    }
    if depth >= MAX_DIRECTORY_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if meta.is_dir() {
            manifest_files(&entry, depth + 1, out)?;
        } else if !meta.file_type().is_symlink()
            || std::fs::metadata(&entry).is_ok_and(|m| m.is_file())
        {
            let manifest = entry
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest {
                out.push(entry);
            }
        }
    }
    Ok(())
}
