//! Where `libonnxruntime.so` is looked for when ONNX Runtime is loaded at run time.
//!
//! Most users get ONNX Runtime from `pip install onnxruntime`: the wheel ships the shared
//! library inside the package (`site-packages/onnxruntime/capi/`). So after the explicit
//! settings and the system's library directories, the search covers the Python environment
//! the user has active (`VIRTUAL_ENV`, `CONDA_PREFIX`) and the `python3` on `PATH`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One place the library may be, and why it is searched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: PathBuf,
    /// Said in the log line when this candidate is the one loaded.
    pub origin: String,
}

/// What the search reads from its surroundings; the real one reads the process environment
/// and runs `python3`, tests give fixed answers.
pub trait Surroundings {
    fn var(&self, name: &str) -> Option<OsString>;
    /// The directory of the running executable.
    fn exe_dir(&self) -> Option<PathBuf>;
    /// `sys.path` of the `python3` on `PATH` and that interpreter's path; None when there is
    /// no such interpreter or it did not answer in time.
    fn python_sys_path(&self) -> Option<(PathBuf, Vec<PathBuf>)>;
}

/// The running process's environment.
pub struct ProcessSurroundings;

/// A Python interpreter that prints its `sys.path` slower than this is skipped (a broken
/// shim must not hold up the server's start).
const PYTHON_TIMEOUT: Duration = Duration::from_secs(5);

impl Surroundings for ProcessSurroundings {
    fn var(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name).filter(|v| !v.is_empty())
    }

    fn exe_dir(&self) -> Option<PathBuf> {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
    }

    fn python_sys_path(&self) -> Option<(PathBuf, Vec<PathBuf>)> {
        let python = find_on_path("python3", self.var("PATH")?)?;
        let mut child = Command::new(&python)
            .args(["-c", "import sys\nfor p in sys.path: print(p)"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if started.elapsed() < PYTHON_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
        let output = child.wait_with_output().ok()?;
        if !output.status.success() {
            return None;
        }
        let paths = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        Some((python, paths))
    }
}

fn find_on_path(program: &str, path: OsString) -> Option<PathBuf> {
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// How ONNX Runtime's library is asked for, strongest first.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// `onnxruntime_lib` in the config, `--ort-lib` or `FERRY_ORT_LIB`.
    pub explicit: Option<&'a Path>,
}

/// Every place searched, in order. An explicit setting is the only candidate: a user who
/// names a library must get that one or an error, never another found elsewhere.
/// The Python candidates are listed last and only computed when nothing before them exists,
/// so a server with a system-wide library never starts an interpreter.
pub fn search(request: &Request<'_>, env: &dyn Surroundings) -> Vec<Candidate> {
    if let Some(path) = request.explicit {
        return vec![Candidate {
            path: path.to_path_buf(),
            origin: "the configured path (onnxruntime_lib / --ort-lib / FERRY_ORT_LIB)".into(),
        }];
    }
    if let Some(path) = env.var("ORT_DYLIB_PATH") {
        return vec![Candidate {
            path: PathBuf::from(path),
            origin: "ORT_DYLIB_PATH".into(),
        }];
    }
    let mut out = Vec::new();
    if let Some(exe_dir) = env.exe_dir() {
        push_dir(
            &mut out,
            &exe_dir.join("../lib"),
            "next to the ferry binary",
        );
        push_dir(&mut out, &exe_dir, "next to the ferry binary");
    }
    for dir in ["/usr/local/lib", "/usr/lib", "/opt/onnxruntime/lib"] {
        push_dir(&mut out, Path::new(dir), "a system library directory");
    }
    if out.iter().any(|c| c.path.is_file()) {
        return out;
    }
    if let Some(venv) = env.var("VIRTUAL_ENV") {
        for site in site_packages(Path::new(&venv)) {
            push_dir(
                &mut out,
                &site.join("onnxruntime/capi"),
                "the onnxruntime package of the active virtualenv (VIRTUAL_ENV)",
            );
        }
    }
    if let Some(conda) = env.var("CONDA_PREFIX") {
        let conda = PathBuf::from(conda);
        // conda-forge's onnxruntime package puts the library in the environment's lib/.
        push_dir(
            &mut out,
            &conda.join("lib"),
            "the active conda environment (CONDA_PREFIX)",
        );
        for site in site_packages(&conda) {
            push_dir(
                &mut out,
                &site.join("onnxruntime/capi"),
                "the onnxruntime package of the active conda environment (CONDA_PREFIX)",
            );
        }
    }
    if out.iter().any(|c| c.path.is_file()) {
        return out;
    }
    if let Some((python, sys_path)) = env.python_sys_path() {
        let origin = format!(
            "the onnxruntime package of {} (python3 on PATH)",
            python.display()
        );
        for dir in sys_path {
            push_dir(&mut out, &dir.join("onnxruntime/capi"), &origin);
        }
    }
    out
}

/// The first candidate that exists.
pub fn find(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates.iter().find(|c| c.path.is_file())
}

/// `lib/python3.*/site-packages` (and `lib64`) under an environment prefix.
fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    ["lib", "lib64"]
        .iter()
        .flat_map(|lib| named_like(&prefix.join(lib), "python3"))
        .map(|p| p.join("site-packages"))
        .collect()
}

/// The entries of `dir` whose names start with `prefix`, sorted by name (none if unreadable).
fn named_like(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found
}

/// `dir/libonnxruntime.so`, then the versioned files in `dir` (newest name first): the wheel
/// ships only `libonnxruntime.so.<version>`.
fn push_dir(out: &mut Vec<Candidate>, dir: &Path, origin: &str) {
    out.push(Candidate {
        path: dir.join("libonnxruntime.so"),
        origin: origin.to_string(),
    });
    out.extend(
        named_like(dir, "libonnxruntime.so.")
            .into_iter()
            .rev()
            .map(|path| Candidate {
                path,
                origin: origin.to_string(),
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fixed {
        vars: HashMap<&'static str, PathBuf>,
        python: Option<(PathBuf, Vec<PathBuf>)>,
        python_asked: std::cell::Cell<bool>,
    }

    impl Fixed {
        fn new() -> Fixed {
            Fixed {
                vars: HashMap::new(),
                python: None,
                python_asked: std::cell::Cell::new(false),
            }
        }
    }

    impl Surroundings for Fixed {
        fn var(&self, name: &str) -> Option<OsString> {
            self.vars.get(name).map(|p| p.clone().into_os_string())
        }
        fn exe_dir(&self) -> Option<PathBuf> {
            None
        }
        fn python_sys_path(&self) -> Option<(PathBuf, Vec<PathBuf>)> {
            self.python_asked.set(true);
            self.python.clone()
        }
    }

    fn wheel_lib(site: &Path) -> PathBuf {
        let capi = site.join("onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        let lib = capi.join("libonnxruntime.so.1.31.1");
        std::fs::write(&lib, b"").unwrap();
        lib
    }

    fn system_has_ort() -> bool {
        ["/usr/local/lib", "/usr/lib", "/opt/onnxruntime/lib"]
            .iter()
            .any(|d| !named_like(Path::new(d), "libonnxruntime.so").is_empty())
    }

    #[test]
    fn explicit_setting_is_the_only_candidate() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Fixed::new();
        env.vars.insert("VIRTUAL_ENV", dir.path().to_path_buf());
        wheel_lib(&dir.path().join("lib/python3.11/site-packages"));
        let explicit = Path::new("/somewhere/libonnxruntime.so");
        let found = search(
            &Request {
                explicit: Some(explicit),
            },
            &env,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, explicit);
        assert!(!env.python_asked.get());
    }

    #[test]
    fn finds_the_wheel_in_the_active_virtualenv() {
        if system_has_ort() {
            return; // a system-wide library wins; covered by the order test below
        }
        let dir = tempfile::tempdir().unwrap();
        let lib = wheel_lib(&dir.path().join("lib/python3.12/site-packages"));
        let mut env = Fixed::new();
        env.vars.insert("VIRTUAL_ENV", dir.path().to_path_buf());
        let candidates = search(&Request::default(), &env);
        let found = find(&candidates).expect("the venv's library is found");
        assert_eq!(found.path, lib);
        assert!(found.origin.contains("VIRTUAL_ENV"), "{}", found.origin);
        assert!(
            !env.python_asked.get(),
            "python3 is not started when the venv has the library"
        );
    }

    #[test]
    fn finds_conda_forge_library_and_wheel_in_conda_env() {
        if system_has_ort() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let lib = wheel_lib(&dir.path().join("lib/python3.11/site-packages"));
        let mut env = Fixed::new();
        env.vars.insert("CONDA_PREFIX", dir.path().to_path_buf());
        let candidates = search(&Request::default(), &env);
        assert_eq!(find(&candidates).unwrap().path, lib);

        let forge = dir.path().join("lib/libonnxruntime.so");
        std::fs::write(&forge, b"").unwrap();
        let candidates = search(&Request::default(), &env);
        let found = find(&candidates).unwrap();
        assert_eq!(found.path, forge);
        assert!(found.origin.contains("CONDA_PREFIX"));
    }

    #[test]
    fn falls_back_to_site_packages_of_python_on_path() {
        if system_has_ort() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("site-packages");
        let lib = wheel_lib(&site);
        let mut env = Fixed::new();
        env.python = Some((
            PathBuf::from("/usr/bin/python3"),
            vec![dir.path().join("nothing-here"), site],
        ));
        let candidates = search(&Request::default(), &env);
        let found = find(&candidates).unwrap();
        assert_eq!(found.path, lib);
        assert!(
            found.origin.contains("/usr/bin/python3"),
            "{}",
            found.origin
        );
    }

    #[test]
    fn nothing_found_without_python_or_environments() {
        if system_has_ort() {
            return;
        }
        let env = Fixed::new();
        let candidates = search(&Request::default(), &env);
        assert!(find(&candidates).is_none());
        assert!(env.python_asked.get());
    }

    #[test]
    fn real_python_answers_with_its_sys_path() {
        // The process environment of the test run: when python3 is on PATH it must answer.
        if let Some(path) = std::env::var_os("PATH")
            && find_on_path("python3", path).is_some()
        {
            let (python, paths) = ProcessSurroundings
                .python_sys_path()
                .expect("python3 on PATH answers with its sys.path");
            assert!(python.is_file());
            assert!(
                paths.iter().any(
                    |p| p.ends_with("site-packages") || p.to_string_lossy().contains("python3")
                )
            );
        }
    }
}
