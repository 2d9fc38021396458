//! The QEMU command line of a guest (see the module documentation of
//! [`super`] for what each option is for).

use std::path::Path;

use super::{Accel, Host};

/// The QEMU command line (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub(super) fn qemu_argv(
    host: &Host,
    accel: Accel,
    initrd: &Path,
    guest_mib: i64,
    smp: i64,
    console: &Path,
    vm: Option<&Path>,
    port: Option<u16>,
) -> Vec<String> {
    let mut a: Vec<String> = vec![host.qemu.display().to_string()];
    let push = |a: &mut Vec<String>, xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(
        &mut a,
        &[
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ],
    );
    push(&mut a, &accel.qemu_args());
    a.extend([
        "-m".into(),
        guest_mib.to_string(),
        "-smp".into(),
        smp.to_string(),
        "-kernel".into(),
        host.kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        // no_timer_check: a slow (TCG, loaded host) CPU can fail the
        // kernel's IO-APIC timer check and panic at boot.
        "console=ttyS0 quiet panic=-1 no_timer_check rdinit=/.shellwego/init".into(),
        "-nic".into(),
        match port {
            Some(p) => format!("user,model=virtio-net-pci,hostfwd=tcp::{p}-:{p}"),
            None => "user,model=virtio-net-pci".into(),
        },
        "-chardev".into(),
        format!(
            "file,id=con,append=on,path={}",
            qemu_opt(&console.display().to_string())
        ),
        "-serial".into(),
        "chardev:con".into(),
    ]);
    // ttyS1: `term`/`kill` for init; ttyS2: the guest daemon (commands).
    if let Some(vm) = vm {
        for name in ["ctl", "exec"] {
            a.extend([
                "-chardev".into(),
                format!(
                    "pipe,id={name},path={}",
                    qemu_opt(&vm.join(name).display().to_string())
                ),
                "-serial".into(),
                format!("chardev:{name}"),
            ]);
        }
    }
    a
}

/// A value in a QEMU option list: commas are doubled.
pub(super) fn qemu_opt(s: &str) -> String {
    s.replace(',', ",,")
}
