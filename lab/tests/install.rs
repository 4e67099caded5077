//! scripts/install.sh as a fresh machine runs it, set-up included: the binary on sudo's
//! fixed PATH, completions and man pages, and the uninstall. It installs the lab binary
//! this test was built with (`LAB_BINARY`): a release build of its own took 6.5 of the
//! test command's minutes, for a step (`cargo build --release`) that the README's main
//! command and the GitHub workflow run anyway. It runs in a mount namespace of its
//! own, with /usr/local and /usr/sbin as overlays on a scratch directory, so the
//! machine's own /usr/local and /usr/sbin never change.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn install_puts_lab_on_sudos_path_with_completions_and_man_pages() {
    let t = tmpdir("install");
    let before = (
        Path::new("/usr/sbin/lab").exists(),
        Path::new("/usr/local/bin/lab").exists(),
    );
    let script = format!(
        r#"set -eu
t={t}
for d in local sbin; do mkdir -p "$t/$d/up" "$t/$d/work"; done
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$t/local/up,workdir=$t/local/work" /usr/local
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$t/sbin/up,workdir=$t/sbin/work" /usr/sbin
# As on a machine where lab was never installed.
rm -f /usr/local/bin/lab /usr/sbin/lab
LAB_BINARY={bin} {root}/scripts/install.sh
echo "--- sudo's PATH"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin lab --version
echo "--- bash"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -c '. /usr/local/share/bash-completion/completions/lab && complete -p lab'
echo "--- files"
ls /usr/local/share/zsh/site-functions/_lab /usr/local/share/fish/vendor_completions.d/lab.fish
ls /usr/local/share/man/man1/lab.1 /usr/local/share/man/man1/lab-run.1
head -c 200 /usr/local/share/man/man1/lab-run.1 | grep -c '^.TH lab-run 1'
echo "--- uninstall"
{root}/scripts/install.sh --uninstall
ls /usr/local/bin/lab /usr/sbin/lab /usr/local/share/man/man1/lab.1 2>&1 || true
"#,
        t = t.display(),
        root = root().display(),
        bin = env!("CARGO_BIN_EXE_lab"),
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c", &script])
        .output()
        .expect("unshare (util-linux) runs");
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let section = |name: &str| -> String {
        out.split(&format!("--- {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} section in:\n{out}"))
            .split("\n---")
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(
        section("sudo's PATH").starts_with(&format!("lab {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(
        section("bash").contains("_lab") && section("bash").ends_with(" lab"),
        "{out}"
    );
    assert!(section("files").trim_end().ends_with('1'), "{out}");
    let gone = section("uninstall");
    for f in [
        "/usr/local/bin/lab",
        "/usr/sbin/lab",
        "/usr/local/share/man/man1/lab.1",
    ] {
        assert!(
            gone.contains(&format!("cannot access '{f}'")),
            "{f} is still there after --uninstall:\n{out}"
        );
    }
    // What was installed went to the overlays, never to the machine.
    assert!(t.join("local/up/bin").exists(), "{out}");
    assert_eq!(
        before,
        (
            Path::new("/usr/sbin/lab").exists(),
            Path::new("/usr/local/bin/lab").exists()
        )
    );
}
