//! The Debian package, as a user gets it: `scripts/package.sh` builds it, lintian reviews it,
//! `apt-get install ./p11audit_*.deb` installs it, and then:
//! - the files are where the package says: the module in /usr/lib/<multiarch>/pkcs11, the
//!   program, the header, the conffile, the accounts (sysusers.d) and the log directory
//!   (tmpfiles.d); the p11-kit module file only as an example, so p11-kit users are untouched;
//! - unconfigured, the module refuses C_Initialize with a line naming /etc/p11audit.conf;
//! - configured through /etc/p11audit.conf alone (no P11AUDIT_* variable anywhere), pkcs11-tool
//!   and p11tool (GnuTLS) drive SoftHSM through the installed module as the p11audit user,
//!   p11-kit loads it through the example module file (left out while it cannot initialize),
//!   and /usr/bin/p11audit verifies the log they wrote;
//! - `p11audit --version`, the package version and C_GetInfo agree with Cargo.toml;
//! - `man -l` renders the page, bash loads the completion, `systemd-analyze verify` accepts
//!   every unit the package ships;
//! - `apt-get purge` removes everything but the logs (and the accounts that own them), and
//!   after the logs are taken away, an install and purge leaves the files, users and groups
//!   exactly as they were.
//!
//! It changes the system (a package, accounts, /etc/p11audit.conf, /var/log/p11audit), so it
//! runs only as root on a system without any of them, and a guard puts everything back even
//! when an assertion fails. Otherwise it prints why and checks nothing; under CI=true that is a
//! failure.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const PACKAGE: &str = "p11audit";
const CONFFILE: &str = "/etc/p11audit.conf";
const LOG_DIR: &str = "/var/log/p11audit";
const USERS: &[&str] = &["p11audit"];
const GROUPS: &[&str] = &["p11audit", "p11audit-clients", "p11audit-auditors"];
/// lintian tags left, and why: the package has no published maintainer address yet (the
/// Maintainer field and the changelog's signature use the reserved domain `invalid`), and it is
/// built locally, not uploaded to Debian, so its first changelog entry closes no ITP bug.
const LINTIAN_ACCEPTED: &str =
    "bogus-mail-host,bogus-mail-host-in-debian-changelog,initial-upload-closes-no-bugs";

/// Skips with the reason, or fails under CI.
fn cannot_run(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the package test must run in CI: {why}");
    }
    eprintln!("package test SKIPPED: {why}");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout_of(cmd: &mut Command, what: &str) -> String {
    String::from_utf8(run_ok(cmd, what).stdout).expect("UTF-8")
}

fn package_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
}

fn account_names(database: &str) -> BTreeSet<String> {
    stdout_of(Command::new("getent").arg(database), "getent")
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
}

/// What the package may touch: the files under /etc, /usr and /var/lib (apt's and dpkg's own
/// records aside) and in the log directory, with the users and groups.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    files: BTreeSet<PathBuf>,
    users: BTreeSet<String>,
    groups: BTreeSet<String>,
}

impl Snapshot {
    fn take() -> Snapshot {
        let mut files = BTreeSet::new();
        for top in ["/etc", "/usr", "/var/lib", LOG_DIR] {
            walk(Path::new(top), &mut files);
        }
        Snapshot {
            files,
            users: account_names("passwd"),
            groups: account_names("group"),
        }
    }

    /// What `self` has that `before` had not, and what it lost.
    fn changes_since(&self, before: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |what: &str, now: Vec<String>, then: Vec<String>| {
            let (now, then): (BTreeSet<_>, BTreeSet<_>) =
                (now.into_iter().collect(), then.into_iter().collect());
            out.extend(now.difference(&then).map(|x| format!("new {what} {x}")));
            out.extend(then.difference(&now).map(|x| format!("lost {what} {x}")));
        };
        let paths = |s: &Snapshot| {
            s.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
        };
        diff("file", paths(self), paths(before));
        diff(
            "user",
            self.users.iter().cloned().collect(),
            before.users.iter().cloned().collect(),
        );
        diff(
            "group",
            self.groups.iter().cloned().collect(),
            before.groups.iter().cloned().collect(),
        );
        out
    }
}

/// Records and state of the package manager and the account tools, which change with any
/// install or account change and are not the package's: dpkg's and apt's databases, and the
/// backup and lock files of /etc/passwd and its kin.
fn not_the_packages(path: &Path) -> bool {
    ["/var/lib/dpkg", "/var/lib/apt", "/var/lib/lintian"]
        .iter()
        .any(|p| path.starts_with(p))
        || [
            "/etc/passwd-",
            "/etc/group-",
            "/etc/shadow-",
            "/etc/gshadow-",
            "/etc/subuid-",
            "/etc/subgid-",
            "/etc/.pwd.lock",
            "/etc/ld.so.cache",
        ]
        .iter()
        .any(|p| path == Path::new(p))
}

fn walk(dir: &Path, files: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if not_the_packages(&path) {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        files.insert(path.clone());
        if is_dir {
            walk(&path, files);
        }
    }
}

/// Puts the system back as it was before the test, whatever happened: purges the package if
/// it is installed, and removes the log directory, the conffile and the accounts, which did
/// not exist before (the test checks that first).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        if package_installed() {
            let out = Command::new("apt-get")
                .args(["purge", "-y", "-q", PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
            if let Ok(out) = &out {
                if !out.status.success() {
                    eprintln!("package test: apt-get purge failed:\n{}", text(out));
                }
            }
        }
        let _ = fs::remove_dir_all(LOG_DIR);
        let _ = fs::remove_file(CONFFILE);
        for user in USERS {
            let _ = Command::new("userdel").arg(user).output();
        }
        for group in GROUPS {
            let _ = Command::new("groupdel").arg(group).output();
        }
    }
}

fn apt_get(args: &[&str], what: &str) -> Output {
    run_ok(
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        what,
    )
}

/// A command run as the p11audit user, with an environment that has no P11AUDIT_* variable:
/// only PATH, HOME and the SoftHSM configuration.
fn as_p11audit(program: &str, home: &Path, softhsm_conf: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=p11audit",
        "--regid=p11audit",
        "--clear-groups",
        "--",
        program,
    ])
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("HOME", home)
    .env("SOFTHSM2_CONF", softhsm_conf)
    .current_dir(home);
    cmd
}

fn owner_name(uid: u32, database: &str) -> String {
    stdout_of(
        Command::new("getent").args([database, &uid.to_string()]),
        "getent",
    )
    .split(':')
    .next()
    .unwrap_or_default()
    .to_string()
}

#[test]
fn debian_package_installs_works_and_purges() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return cannot_run("not running as root: installing a package needs root");
    }
    for tool in [
        "apt-get",
        "dpkg-architecture",
        "setpriv",
        "pkcs11-tool",
        "p11tool",
        "softhsm2-util",
        "man",
    ] {
        if !command_exists(tool) {
            return cannot_run(&format!(
                "{tool} is not installed (scripts/install-deps.sh installs it)"
            ));
        }
    }
    if package_installed() {
        return cannot_run("the p11audit package is installed here; the test never touches it");
    }
    let users = account_names("passwd");
    let groups = account_names("group");
    for (present, what) in [
        (Path::new(CONFFILE).exists(), CONFFILE),
        (Path::new(LOG_DIR).exists(), LOG_DIR),
        (USERS.iter().any(|u| users.contains(*u)), "a p11audit user"),
        (
            GROUPS.iter().any(|g| groups.contains(*g)),
            "a p11audit group",
        ),
    ] {
        if present {
            return cannot_run(&format!(
                "{what} exists on this machine; the test installs its own and must leave the \
                 system as it found it"
            ));
        }
    }

    // Build the package as the README says.
    let started = Instant::now();
    // Its progress goes to the test's stderr; the path it prints last, to stdout.
    let built = stdout_of(
        Command::new(manifest_dir().join("scripts/package.sh"))
            .current_dir(manifest_dir())
            .stderr(std::process::Stdio::inherit()),
        "scripts/package.sh",
    );
    let deb = PathBuf::from(built.lines().last().expect("package.sh printed the path"));
    assert!(deb.is_file(), "{} missing", deb.display());
    eprintln!(
        "package test: scripts/package.sh took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let version = env!("CARGO_PKG_VERSION");
    let field = |name: &str| {
        stdout_of(
            Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(name),
            "dpkg-deb -f",
        )
        .trim()
        .to_string()
    };
    assert_eq!(field("Version"), format!("{version}-1"), "from Cargo.toml");
    assert_eq!(field("Package"), PACKAGE);
    // dpkg-deb prints the default, "no", for an absent field.
    assert!(
        field("Multi-Arch").eq_ignore_ascii_case("no"),
        "a package with a program and a library is not Multi-Arch"
    );

    if command_exists("lintian") {
        let started = Instant::now();
        let out = Command::new("lintian")
            .args([
                "--fail-on",
                "error,warning",
                "--suppress-tags",
                LINTIAN_ACCEPTED,
            ])
            .arg(&deb)
            .output()
            .expect("lintian");
        assert!(
            out.status.success(),
            "lintian reports more than the accepted tags ({LINTIAN_ACCEPTED}):\n{}",
            text(&out)
        );
        eprintln!(
            "package test: lintian took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "package test: lintian is not installed, the package was not reviewed (scripts/install-deps.sh installs it)"
        );
    }

    let before = Snapshot::take();
    let restore = Restore;

    let deb_arg = deb.display().to_string();
    apt_get(
        &["install", "-y", "-q", &deb_arg],
        "apt-get install ./p11audit_*.deb",
    );
    assert!(package_installed());

    // Where everything is.
    let triplet = stdout_of(
        Command::new("dpkg-architecture").arg("-qDEB_HOST_MULTIARCH"),
        "dpkg-architecture",
    );
    let module = PathBuf::from(format!("/usr/lib/{}/pkcs11/libp11audit.so", triplet.trim()));
    for path in [
        module.as_path(),
        Path::new("/usr/bin/p11audit"),
        Path::new("/usr/include/p11audit.h"),
        Path::new(CONFFILE),
        Path::new("/usr/lib/sysusers.d/p11audit.conf"),
        Path::new("/usr/lib/tmpfiles.d/p11audit.conf"),
        Path::new("/usr/share/doc/p11audit/examples/p11audit.module"),
        Path::new("/usr/share/doc/p11audit/docs/CONFIG.md"),
        Path::new("/usr/share/bash-completion/completions/p11audit"),
    ] {
        assert!(path.is_file(), "{} not installed", path.display());
    }
    let conffiles = stdout_of(
        Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]),
        "dpkg-query Conffiles",
    );
    assert!(conffiles.contains(CONFFILE), "conffiles: {conffiles}");
    // The p11-kit module file is an example only: p11-kit users see no new module.
    for dir in ["/etc/pkcs11/modules", "/usr/share/p11-kit/modules"] {
        let names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !names.iter().any(|n| n.contains("p11audit")),
            "{dir}: {names:?}"
        );
    }
    let meta = fs::metadata(LOG_DIR).expect("the log directory (tmpfiles.d)");
    assert_eq!(meta.mode() & 0o7777, 0o2750, "{LOG_DIR} mode");
    assert_eq!(owner_name(meta.uid(), "passwd"), "p11audit");
    assert_eq!(owner_name(meta.gid(), "group"), "p11audit-auditors");
    let users = account_names("passwd");
    let groups = account_names("group");
    assert!(USERS.iter().all(|u| users.contains(*u)), "sysusers.d users");
    assert!(
        GROUPS.iter().all(|g| groups.contains(*g)),
        "sysusers.d groups"
    );

    // Versions: the program, the package and the module say Cargo.toml's.
    let said = stdout_of(
        Command::new("/usr/bin/p11audit").arg("--version"),
        "p11audit --version",
    );
    assert_eq!(said.trim(), format!("p11audit {version}"));

    // The man page renders, bash loads the completion.
    let man = run_ok(
        Command::new("man")
            .args(["-l", "/usr/share/man/man1/p11audit.1.gz"])
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"),
        "man -l p11audit.1",
    );
    let page = String::from_utf8_lossy(&man.stdout);
    for word in ["p11audit", "verify", "keygen", "Exit status"] {
        assert!(page.contains(word), "man page lacks {word:?}:\n{page}");
    }
    let complete = stdout_of(
        Command::new("bash").args([
            "-c",
            "source /usr/share/bash-completion/completions/p11audit && complete -p p11audit",
        ]),
        "bash completion",
    );
    assert!(complete.contains("p11audit"), "{complete}");

    // Every systemd unit the package ships passes systemd-analyze verify.
    let listed = stdout_of(Command::new("dpkg").args(["-L", PACKAGE]), "dpkg -L");
    let units: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("/systemd/system/") && !l.ends_with('/'))
        .filter(|l| Path::new(l).is_file())
        .collect();
    if units.is_empty() {
        eprintln!("package test: the package ships no systemd unit");
    } else if command_exists("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .output()
            .expect("systemd-analyze");
        assert!(
            out.status.success(),
            "systemd-analyze verify {units:?}:\n{}",
            text(&out)
        );
    } else {
        return cannot_run("systemd-analyze is not installed: the units were not verified");
    }

    // Unconfigured (every line of the conffile commented): C_Initialize fails and says where
    // it looked.
    let work = tempfile::tempdir().expect("tempdir");
    let home = work.path();
    let softhsm_conf = new_token(&home.join("token"));
    let key = home.join("chain.key");
    // The example p11-kit module file, enabled for the p11audit user alone (p11-kit reads
    // $HOME/.config/pkcs11; `user-config: only` leaves the system's module files out, so
    // SoftHSM's token can be reached only through p11audit there).
    let p11kit = home.join(".config/pkcs11");
    fs::create_dir_all(p11kit.join("modules")).expect("mkdir");
    fs::write(p11kit.join("pkcs11.conf"), "user-config: only\n").expect("pkcs11.conf");
    fs::copy(
        "/usr/share/doc/p11audit/examples/p11audit.module",
        p11kit.join("modules/p11audit.module"),
    )
    .expect("copy the example module file");
    let list_modules = || {
        let out = as_p11audit("p11-kit", home, &softhsm_conf)
            .arg("list-modules")
            .output()
            .expect("p11-kit list-modules");
        assert!(
            out.status.success(),
            "p11-kit list-modules with p11audit's example module file:\n{}",
            text(&out)
        );
        out
    };
    run_ok(
        Command::new("chown")
            .args(["-R", "p11audit:p11audit"])
            .arg(home),
        "chown",
    );
    fs::set_permissions(home, fs::Permissions::from_mode(0o700)).expect("chmod");
    let module_arg = module.display().to_string();
    let out = as_p11audit("pkcs11-tool", home, &softhsm_conf)
        .args(["--module", &module_arg, "--list-slots"])
        .output()
        .expect("pkcs11-tool");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "p11audit: P11AUDIT_MODULE is not set: set it to the real PKCS#11 module, e.g. \
             P11AUDIT_MODULE=/usr/lib/softhsm/libsofthsm2.so (nor is it set in /etc/p11audit.conf)"
        ),
        "{}",
        text(&out)
    );

    // A module that cannot initialize does not break p11-kit: it leaves it out and says why.
    let out = list_modules();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("p11audit-c-test"),
        "{}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("p11audit: P11AUDIT_MODULE is not set"),
        "{}",
        text(&out)
    );

    // Configured through /etc/p11audit.conf alone.
    run_ok(
        as_p11audit("/usr/bin/p11audit", home, &softhsm_conf)
            .arg("keygen")
            .arg(&key),
        "p11audit keygen",
    );
    let log = Path::new(LOG_DIR).join("audit.log");
    let shipped = fs::read_to_string(CONFFILE).expect("conffile");
    fs::write(
        CONFFILE,
        format!(
            "{shipped}\nP11AUDIT_MODULE={SOFTHSM}\nP11AUDIT_LOG={}\nP11AUDIT_KEY_FILE={}\n\
             P11AUDIT_LOG_MODE=0640\n",
            log.display(),
            key.display()
        ),
    )
    .expect("write the conffile");
    let pkcs11_tool = |args: &[&str], what: &str| {
        let out = as_p11audit("pkcs11-tool", home, &softhsm_conf)
            .args(["--module", &module_arg])
            .args(args)
            .output()
            .expect("pkcs11-tool");
        assert!(out.status.success(), "{what}:\n{}", text(&out));
        text(&out)
    };
    let info = pkcs11_tool(&["--show-info"], "pkcs11-tool --show-info");
    let (major_minor, _) = p11audit_version();
    assert!(
        info.contains(&format!("p11audit {version} (ver {major_minor})")),
        "C_GetInfo through the installed module:\n{info}"
    );
    assert!(
        info.contains("SoftHSM"),
        "the provider's manufacturer:\n{info}"
    );
    pkcs11_tool(
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--label",
            "package-key",
            "--id",
            "19",
        ],
        "pkcs11-tool --keypairgen",
    );
    let data = home.join("data");
    fs::write(&data, b"signed through the installed module").expect("data");
    let data_arg = data.display().to_string();
    let sig_arg = home.join("sig").display().to_string();
    run_ok(
        Command::new("chown").arg("p11audit").arg(&data),
        "chown data",
    );
    pkcs11_tool(
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            "19",
            "--input-file",
            &data_arg,
            "--output-file",
            &sig_arg,
        ],
        "pkcs11-tool --sign",
    );
    let out = as_p11audit("p11tool", home, &softhsm_conf)
        .args(["--provider", &module_arg, "--list-tokens"])
        .output()
        .expect("p11tool");
    assert!(
        out.status.success(),
        "p11tool --list-tokens:\n{}",
        text(&out)
    );
    assert!(text(&out).contains("p11audit-c-test"), "{}", text(&out));

    // Through the example p11-kit module file: p11-kit sees p11audit (its C_GetInfo) and the
    // token behind it.
    let out = list_modules();
    let listed = String::from_utf8_lossy(&out.stdout);
    for line in [
        format!("library-description: p11audit {version}"),
        format!("library-version: {major_minor}"),
        "token: p11audit-c-test".to_string(),
    ] {
        assert!(listed.contains(&line), "no {line:?} in:\n{}", text(&out));
    }

    // The log: the auditors' group (setgid directory, mode 0640), and it verifies with the
    // installed program.
    let meta = fs::metadata(&log).expect("the log");
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(owner_name(meta.gid(), "group"), "p11audit-auditors");
    let out = Command::new("/usr/bin/p11audit")
        .args(["verify", "--key-file"])
        .arg(&key)
        .arg(&log)
        .output()
        .expect("p11audit verify");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let records = parse_records(&fs::read_to_string(&log).expect("read the log"));
    for (function, exe) in [
        ("C_GenerateKeyPair", "pkcs11-tool"),
        ("C_Sign", "pkcs11-tool"),
        ("C_GetTokenInfo", "p11tool"),
    ] {
        assert!(
            records.iter().any(|r| r["fn"] == function
                && r["rv"] == "CKR_OK"
                && r["exe"].as_str().is_some_and(|e| e.ends_with(exe))),
            "no {function} by {exe} in the log"
        );
    }

    // Purge: everything goes but the logs, and the accounts that own them.
    apt_get(&["purge", "-y", "-q", PACKAGE], "apt-get purge p11audit");
    assert!(!package_installed());
    assert!(
        Path::new(LOG_DIR).is_dir(),
        "purge removed the log directory"
    );
    let after_purge = Snapshot::take();
    let mut expected: Vec<String> = ["audit.log", "audit.log.state"]
        .iter()
        .map(|f| format!("new file {LOG_DIR}/{f}"))
        .collect();
    expected.extend(USERS.iter().map(|u| format!("new user {u}")));
    expected.extend(GROUPS.iter().map(|g| format!("new group {g}")));
    expected.sort();
    let mut changes = after_purge.changes_since(&before);
    changes.sort();
    assert_eq!(changes, expected, "left by the purge");

    // The auditor takes the logs away; a package installed and purged then leaves nothing.
    fs::remove_dir_all(LOG_DIR).expect("take the logs away");
    apt_get(&["install", "-y", "-q", &deb_arg], "apt-get install again");
    apt_get(&["purge", "-y", "-q", PACKAGE], "apt-get purge again");
    let changes = Snapshot::take().changes_since(&before);
    assert!(
        changes.is_empty(),
        "left by install and purge: {changes:#?}"
    );
    drop(restore);
}
