//! Two jobs before the crate compiles, and two things for the linker (below):
//!
//! - stamps the binary with its git commit and build date for `tessera --version`
//!   (reproducible builds set SOURCE_DATE_EPOCH; builds outside git say "unknown");
//! - builds the web console (`ui/`, a Vite app) into `ui/dist`, which `control::console`
//!   embeds. `npm ci` + `npm run build` run only when the console's sources changed since
//!   the last build (a digest of them is kept in `ui/.build-stamp`). Offline or without
//!   Node.js, `TESSERA_UI_DIST=DIR` embeds an already built `dist` instead.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    stamp_version();
    // The C++ static constructors (about 90 of RocksDB's files, run at start in every
    // process, whatever its roles) are in `.text.startup.*` sections; lld (Rust's default
    // linker here) otherwise leaves each next to its file's code, so starting touched
    // about 90 places in the binary, and the kernel maps 64 KiB around each page it faults
    // in. Grouped, the constructors take 8 faults; what they call still sits next to each
    // file's code, so a process saves 0.5-0.8 MiB (measured in bench/README.md, agent-rss).
    // GNU ld groups them by default and accepts the flag too.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,keep-text-section-prefix");
    link_order();
    if let Err(e) = console() {
        // A build script's panic is how cargo shows a clear failure.
        panic!("\n\nbuilding the web console (ui/) failed: {e}\n\n");
    }
}

/// Hands lld `scripts/link-order.txt`, the functions an idle agent and the demo app run
/// (written by `scripts/link-order.sh`), so the linker puts them side by side at the head
/// of `.text`: spread over the binary's 30 MiB of code, they kept 18-22 MiB of it resident
/// in every agent; together they take about 3 MiB (bench/README.md, agent-rss). Names the
/// build does not have are skipped silently, so a stale file costs memory, never a build.
/// `TESSERA_LINK_ORDER=0` leaves it out (for a linker other than lld, which knows no such
/// option).
fn link_order() {
    const FILE: &str = "scripts/link-order.txt";
    println!("cargo:rerun-if-changed={FILE}");
    println!("cargo:rerun-if-env-changed=TESSERA_LINK_ORDER");
    if std::env::var("TESSERA_LINK_ORDER").as_deref() == Ok("0") {
        return;
    }
    let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join(FILE);
    if !path.is_file() {
        return;
    }
    let Some(path) = path.to_str().filter(|p| !p.contains(',')) else {
        // -Wl splits its argument at commas.
        println!(
            "cargo:warning=link order skipped: {} has a comma or is not UTF-8",
            path.display()
        );
        return;
    };
    println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={path}");
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// The console's inputs: everything under ui/ that the Vite build reads.
const UI_INPUTS: &[&str] = &[
    "index.html",
    "package.json",
    "package-lock.json",
    "tsconfig.json",
    "vite.config.ts",
    "src",
    "public",
    "scripts",
];

fn console() -> Result<(), String> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let ui = root.join("ui");
    let dist = ui.join("dist");
    println!("cargo:rerun-if-env-changed=TESSERA_UI_DIST");
    for input in UI_INPUTS {
        println!("cargo:rerun-if-changed=ui/{input}");
    }
    if let Some(given) = std::env::var_os("TESSERA_UI_DIST") {
        let given = PathBuf::from(given);
        if !given.join("index.html").is_file() {
            return Err(format!(
                "TESSERA_UI_DIST={} has no index.html: point it at a built ui/dist",
                given.display()
            ));
        }
        let given = given
            .canonicalize()
            .map_err(|e| format!("TESSERA_UI_DIST={}: {e}", given.display()))?;
        println!("cargo:rustc-env=TESSERA_UI_EMBED={}", given.display());
        return Ok(());
    }
    println!("cargo:rustc-env=TESSERA_UI_EMBED={}", dist.display());
    let digest = inputs_digest(&ui).map_err(|e| format!("reading ui/: {e}"))?;
    let stamp = ui.join(".build-stamp");
    if dist.join("index.html").is_file()
        && std::fs::read_to_string(&stamp).ok().as_deref() == Some(digest.as_str())
    {
        return Ok(());
    }
    let lock = ui.join("package-lock.json");
    let installed = ui.join("node_modules/.package-lock.json");
    let fresh = match (modified(&lock), modified(&installed)) {
        (Some(l), Some(i)) => i >= l,
        _ => false,
    };
    if !fresh {
        npm(&ui, &["ci", "--no-audit", "--no-fund", "--loglevel=error"])?;
    }
    npm(&ui, &["run", "build", "--silent"])?;
    if !dist.join("index.html").is_file() {
        return Err("`npm run build` left no ui/dist/index.html".into());
    }
    std::fs::write(&stamp, digest).map_err(|e| format!("writing {}: {e}", stamp.display()))
}

fn npm(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| {
            format!(
                "cannot run npm ({e}). Install Node.js 18+ with npm, or build the console \
                 elsewhere and set TESSERA_UI_DIST to its dist directory (README: offline build)"
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`npm {}` in {} failed ({}):\n{}{}",
        args.join(" "),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// FNV-1a over every input file's path and bytes, in sorted order.
fn inputs_digest(ui: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    for input in UI_INPUTS {
        collect(&ui.join(input), &mut files)?;
    }
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in files {
        eat(f
            .strip_prefix(ui)
            .unwrap_or(&f)
            .to_string_lossy()
            .as_bytes());
        eat(&[0]);
        eat(&std::fs::read(&f)?);
        eat(&[0]);
    }
    Ok(format!("{h:016x}"))
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        for entry in std::fs::read_dir(p)? {
            collect(&entry?.path(), out)?;
        }
    } else if p.is_file() {
        out.push(p.to_path_buf());
    }
    Ok(())
}

fn stamp_version() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=TESSERA_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=TESSERA_BUILD_DATE={}", civil_date(secs));
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Rebuild when HEAD moves: HEAD itself (branch switch) and the branch it names.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        if let Some(branch) = head.strip_prefix("ref: ") {
            // A missing file would make cargo rebuild every time; packed refs cover it then.
            let path = format!(".git/{}", branch.trim());
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    if std::path::Path::new(".git/packed-refs").exists() {
        println!("cargo:rerun-if-changed=.git/packed-refs");
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian `YYYY-MM-DD` (Howard Hinnant's algorithm).
fn civil_date(secs: u64) -> String {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
