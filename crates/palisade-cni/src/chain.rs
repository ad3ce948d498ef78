//! Chaining `palisade-cni` into the node's CNI configuration, and taking it out again.
//!
//! The container runtime (containerd, CRI-O, through libcni) uses the **first** file of
//! the configuration directory in lexical order whose name ends in `.conf`, `.conflist`
//! or `.json`. [`install`] edits that file: it appends the `palisade-cni` entry to the end
//! of its `plugins` list (after the VPC CNI's `aws-cni`, `egress-cni`, `portmap`, or any
//! other chain), so the plugin sees the final `prevResult` on ADD and, as DEL runs the
//! chain in reverse, unregisters the pod first. [`uninstall`] removes it again.
//!
//! Both edit the file as **text**, not by re-serialising JSON: the entry is inserted
//! after the last plugin's closing brace and removed with exactly the separator before
//! it, so everything else in the file (key order, indentation, numbers, comments a
//! runtime tolerates) is restored byte for byte. A single-plugin `.conf`/`.json` file
//! cannot chain; it is moved aside to `NAME.palisade-bak` (not a CNI extension, so the
//! runtime ignores it) and replaced by `STEM.conflist` that embeds its bytes verbatim as
//! the first plugin; uninstall moves it back. Both are idempotent, and every write is a
//! temporary file renamed into place, so the runtime never reads half a file.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The `type` of our entry in a plugin list: the binary's name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "palisade-cni";

/// File name extensions libcni reads from the configuration directory.
pub const CONF_EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

/// Suffix of a single-plugin file moved aside by [`install`].
pub const BACKUP_SUFFIX: &str = ".palisade-bak";

/// Errors of [`install`] and [`uninstall`]; each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A file or directory could not be read or written.
    #[error("{path}: {what}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory has no configuration to chain into.
    #[error("{0}: no CNI configuration (*.conf, *.conflist, *.json): palisade-cni chains after the node's network plugin, which writes one")]
    NoConfig(PathBuf),
    /// A configuration file is not what the CNI spec describes.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        why: String,
    },
}

/// What [`install`] or [`uninstall`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing needed changing (already chained, or nothing to remove).
    Unchanged,
    /// These files were written, created, moved or removed.
    Changed(Vec<PathBuf>),
}

/// The entry `install` puts in the plugin list: `{"type":"palisade-cni", ...options}`.
/// `options` are the plugin's own keys (`agentSocket`, `failPolicy`, `timeoutMs`).
pub fn entry(options: &serde_json::Map<String, Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("type".into(), Value::String(PLUGIN_TYPE.into()));
    for (k, v) in options {
        m.insert(k.clone(), v.clone());
    }
    Value::Object(m)
}

/// The configuration files of `dir` in the order libcni reads them (lexical by name,
/// no recursion; like libcni, everything that is not a directory counts, symbolic
/// links included, so the first file here is the runtime's first file).
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ChainError> {
    let io = |source| ChainError::Io {
        path: dir.to_owned(),
        what: "cannot list the CNI configuration directory",
        source,
    };
    let mut files = Vec::new();
    for e in fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let path = e.path();
        let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
        if CONF_EXTENSIONS.contains(&ext) && !e.file_type().map_err(io)?.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Chains `entry` into the first configuration file of `dir`. Already there and equal:
/// unchanged. There with other options (an upgrade changed them): that entry's text is
/// replaced, nothing else. A `.conf`/`.json` file becomes a `.conflist` (see the module
/// doc). Fails, changing nothing, on a file that is not valid CNI configuration.
pub fn install(dir: &Path, entry: &Value) -> Result<Outcome, ChainError> {
    let files = config_files(dir)?;
    let Some(first) = files.first() else {
        return Err(ChainError::NoConfig(dir.to_owned()));
    };
    if fs::symlink_metadata(first).is_ok_and(|m| m.file_type().is_symlink()) {
        // Renaming a new file over it would replace the link, not edit what it points
        // to; editing the target would change a file outside the directory. Say so.
        return Err(invalid(
            first,
            "is a symbolic link (the runtime's first configuration file): palisade-cni edits only regular files; chain it by hand or replace the link with the file",
        ));
    }
    let text = read(first)?;
    let entry_text = serde_json::to_string(entry).expect("a JSON value serialises");
    if first.extension().and_then(|x| x.to_str()) == Some("conflist") {
        let list = PluginList::parse(first, &text)?;
        let new = match list.ours() {
            Some(i) if list.values[i] == *entry => return Ok(Outcome::Unchanged),
            Some(i) => {
                let (s, e) = list.spans[i];
                format!("{}{}{}", &text[..s], entry_text, &text[e..])
            }
            None => {
                let Some(&(ls, le)) = list.spans.last() else {
                    return Err(invalid(first, "plugins is empty: palisade-cni chains after a plugin that creates the pod's interface"));
                };
                let indent = indent_before(&text, ls);
                format!("{},\n{indent}{entry_text}{}", &text[..le], &text[le..])
            }
        };
        write_atomic(first, new.as_bytes())?;
        return Ok(Outcome::Changed(vec![first.clone()]));
    }
    // A single plugin: wrap it, verbatim, in a list of its own.
    let conf: Value = serde_json::from_str(&text).map_err(|e| invalid(first, e.to_string()))?;
    let field = |k: &str| conf.get(k).and_then(Value::as_str);
    if field("type").is_none() {
        return Err(invalid(first, "type: missing or not a string"));
    }
    if field("type") == Some(PLUGIN_TYPE) {
        return Err(invalid(
            first,
            "type: palisade-cni cannot be the only plugin: it chains after one that creates the pod's interface",
        ));
    }
    let Some(version) = field("cniVersion") else {
        return Err(invalid(first, "cniVersion: missing or not a string"));
    };
    let list_path = first.with_extension("conflist");
    if list_path.exists() {
        return Err(invalid(
            &list_path,
            format!(
                "exists beside {}; cannot turn that file into a plugin list",
                first.display()
            ),
        ));
    }
    let wrapped = serde_json::json!({
        "cniVersion": version,
        "name": field("name").unwrap_or(""),
        "plugins": [],
    });
    let head = serde_json::to_string_pretty(&wrapped).expect("a JSON value serialises");
    // `"plugins": []` is last in the pretty form; put the plugins between the brackets.
    let cut = head.rfind("[]").expect("plugins is rendered as []");
    let list = format!(
        "{}[\n    {},\n    {}\n  ]{}\n",
        &head[..cut],
        text.trim(),
        entry_text,
        &head[cut + 2..]
    );
    let backup = backup_path(first);
    write_atomic(&list_path, list.as_bytes())?;
    rename(first, &backup)?;
    if config_files(dir)?.first() != Some(&list_path) {
        return Err(invalid(
            &list_path,
            "written, but another file now comes first in lexical order; the runtime would not use it",
        ));
    }
    Ok(Outcome::Changed(vec![list_path, backup]))
}

/// Takes every `palisade-cni` entry out of every plugin list of `dir`, restoring the
/// rest of each file byte for byte; a list `install` made from a single-plugin file is
/// removed and that file moved back. Nothing to remove: unchanged.
pub fn uninstall(dir: &Path) -> Result<Outcome, ChainError> {
    let mut changed = Vec::new();
    for path in config_files(dir)? {
        if path.extension().and_then(|x| x.to_str()) != Some("conflist") {
            continue;
        }
        let text = read(&path)?;
        let list = PluginList::parse(&path, &text)?;
        if list.ours().is_none() {
            continue;
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(invalid(
                &path,
                "is a symbolic link listing palisade-cni: palisade-cni edits only regular files (install never chains into a link); remove the entry by hand",
            ));
        }
        if let Some(original) = CONF_EXTENSIONS
            .iter()
            .map(|ext| backup_path(&path.with_extension(ext)))
            .find(|b| b.is_file())
        {
            let restored = original.with_file_name(
                original
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(BACKUP_SUFFIX))
                    .expect("a backup path ends in the suffix"),
            );
            rename(&original, &restored)?;
            fs::remove_file(&path).map_err(|source| ChainError::Io {
                path: path.clone(),
                what: "cannot remove the plugin list made from a single plugin",
                source,
            })?;
            changed.extend([restored, path]);
            continue;
        }
        let mut out = text.clone();
        // Remove from the last entry to the first, so earlier spans stay valid.
        for i in (0..list.spans.len()).rev() {
            if list.values[i].get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE) {
                continue;
            }
            let (s, e) = list.spans[i];
            let (from, to) = if i > 0 {
                (list.spans[i - 1].1, e) // the separator before it, and it
            } else if let Some(&(next, _)) = list.spans.get(1) {
                (s, next) // first of several: it and the separator after it
            } else {
                (s, e)
            };
            out.replace_range(from..to, "");
        }
        write_atomic(&path, out.as_bytes())?;
        changed.push(path);
    }
    Ok(if changed.is_empty() {
        Outcome::Unchanged
    } else {
        Outcome::Changed(changed)
    })
}

/// A parsed `.conflist`: each plugin's value and its byte span in the file's text.
struct PluginList {
    values: Vec<Value>,
    spans: Vec<(usize, usize)>,
}

impl PluginList {
    fn parse(path: &Path, text: &str) -> Result<PluginList, ChainError> {
        let doc: Value = serde_json::from_str(text).map_err(|e| invalid(path, e.to_string()))?;
        let Some(values) = doc.get("plugins").and_then(Value::as_array).cloned() else {
            return Err(invalid(path, "plugins: missing or not a list"));
        };
        for (i, v) in values.iter().enumerate() {
            if v.get("type").and_then(Value::as_str).is_none() {
                return Err(invalid(
                    path,
                    format!("plugins[{i}].type: missing or not a string"),
                ));
            }
        }
        // The text is valid JSON (just parsed), so the scanner below cannot fail on it.
        let spans = plugin_spans(text).ok_or_else(|| invalid(path, "plugins: not found"))?;
        assert_eq!(spans.len(), values.len(), "scanner and parser agree");
        if values.iter().filter(|v| is_ours(v)).count() > 1 {
            return Err(invalid(
                path,
                "plugins: palisade-cni is listed more than once",
            ));
        }
        Ok(PluginList { values, spans })
    }

    fn ours(&self) -> Option<usize> {
        self.values.iter().position(is_ours)
    }
}

fn is_ours(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Byte spans of the elements of the top-level object's `plugins` array, in valid JSON.
fn plugin_spans(text: &str) -> Option<Vec<(usize, usize)>> {
    let mut s = Scanner {
        b: text.as_bytes(),
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        if key == b"\"plugins\"" {
            s.eat(b'[')?;
            let mut spans = Vec::new();
            loop {
                s.ws();
                if s.peek()? == b']' {
                    return Some(spans);
                }
                let start = s.i;
                s.value()?;
                spans.push((start, s.i));
                s.ws();
                if s.peek()? == b',' {
                    s.i += 1;
                }
            }
        }
        s.value()?;
        s.ws();
        s.eat(b',')?;
    }
}

/// A minimal JSON scanner: it only skips values and reports positions.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    /// A string, returned with its quotes.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(&self.b[start..self.i]);
                }
                _ => self.i += 1,
            }
        }
    }
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            open @ (b'{' | b'[') => {
                let close = if open == b'{' { b'}' } else { b']' };
                self.i += 1;
                loop {
                    self.ws();
                    match self.peek()? {
                        c if c == close => {
                            self.i += 1;
                            return Some(());
                        }
                        b',' | b':' => self.i += 1,
                        _ => self.value()?,
                    }
                }
            }
            _ => {
                // number, true, false, null
                while !matches!(
                    self.peek()?,
                    b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}

/// The whitespace between the start of `at`'s line and `at`, if only whitespace; the
/// new entry gets the same indentation as the plugin before it.
fn indent_before(text: &str, at: usize) -> &str {
    let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
    let lead = &text[line_start..at];
    if lead.chars().all(|c| c == ' ' || c == '\t') {
        lead
    } else {
        ""
    }
}

fn backup_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().expect("a file").to_os_string();
    name.push(BACKUP_SUFFIX);
    p.with_file_name(name)
}

fn invalid(path: &Path, why: impl Into<String>) -> ChainError {
    ChainError::Invalid {
        path: path.to_owned(),
        why: why.into(),
    }
}

fn read(path: &Path) -> Result<String, ChainError> {
    fs::read_to_string(path).map_err(|source| ChainError::Io {
        path: path.to_owned(),
        what: "cannot read",
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<(), ChainError> {
    fs::rename(from, to).map_err(|source| ChainError::Io {
        path: from.to_owned(),
        what: "cannot rename",
        source,
    })
}

/// Writes `bytes` to a temporary file beside `path` (a name libcni ignores: no CNI
/// extension), with `path`'s mode if it exists, then renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
    use std::io::Write as _;
    let io = |what, source| ChainError::Io {
        path: path.to_owned(),
        what,
        source,
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().expect("a file"));
    tmp_name.push(format!(".palisade-tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut f = fs::File::create(&tmp).map_err(|e| io("cannot create a temporary file", e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write", e))?;
    if let Ok(meta) = fs::metadata(path) {
        fs::set_permissions(&tmp, meta.permissions()).map_err(|e| io("cannot set mode", e))?;
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("cannot rename into place", e)
    })
}

/// Copies the plugin binary `src` to `bin_dir/palisade-cni` (temporary file, then
/// rename, so a runtime executing it never sees half a binary). Same bytes: unchanged.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<Outcome, ChainError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dest = bin_dir.join(PLUGIN_TYPE);
    let bytes = fs::read(src).map_err(|source| ChainError::Io {
        path: src.to_owned(),
        what: "cannot read the plugin binary",
        source,
    })?;
    if fs::read(&dest).is_ok_and(|old| old == bytes) {
        return Ok(Outcome::Unchanged);
    }
    write_atomic(&dest, &bytes)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).map_err(|source| {
        ChainError::Io {
            path: dest.clone(),
            what: "cannot make executable",
            source,
        }
    })?;
    Ok(Outcome::Changed(vec![dest]))
}
