//! Hand-written umockdev-record fixtures in `tests/fixtures/udev/` and the
//! syspaths of the devices they define.
//!
//! Records are listed parent first (that is the order of the `add` uevents
//! that loading them emits) and deliberately have no `MAJOR`/`MINOR`/`dev`
//! (see the module docs on the host udev database); see
//! `tests/fixtures/udev/README.md`.

use std::path::PathBuf;

/// Directory holding the `*.umockdev` fixtures.
pub const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/udev");

/// Coldplug tree: xHCI controller, root hub, 4-port hub, an FTDI FT232R
/// USB-serial adapter (with interface, usb-serial port and `ttyUSB0`) and an
/// Android phone (with its ADB interface). See [`usb_tree`].
pub const USB_TREE: &str = "usb-tree.umockdev";
/// A second FTDI adapter (`ttyUSB1`) on root-hub port 3, meant to be added
/// after the [`USB_TREE`] for hotplug tests. See [`hotplug_ftdi`].
pub const HOTPLUG_FTDI: &str = "hotplug-ftdi-ttyUSB1.umockdev";

/// Absolute path of a fixture file.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

/// Syspaths in [`USB_TREE`](super::fixtures::USB_TREE).
pub mod usb_tree {
    /// Intel xHCI controller (`SUBSYSTEM=pci`).
    pub const PCI_XHCI: &str = "/sys/devices/pci0000:00/0000:00:14.0";
    /// Root hub `usb1`, 1d6b:0002, bDeviceClass 09.
    pub const ROOT_HUB: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1";
    /// Genesys Logic 4-port hub 05e3:0608 on root port 1, bDeviceClass 09.
    pub const HUB: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1";
    /// Android phone 18d1:4ee7, serial `R58M12ABCDE`, on hub port 4.
    pub const ANDROID_PHONE: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.4";
    /// The phone's ADB interface (ff/42/01).
    pub const ANDROID_ADB_INTERFACE: &str =
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1.4/1-1.4:1.0";
    /// FTDI FT232R 0403:6001, serial `A10KZ3X9`, on root port 2.
    pub const FTDI_DEVICE: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2";
    /// Its only interface, bound to `ftdi_sio`.
    pub const FTDI_INTERFACE: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0";
    /// The `usb-serial` port device between the interface and the tty.
    pub const FTDI_USB_SERIAL_PORT: &str =
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/ttyUSB0";
    /// `ttyUSB0` (`SUBSYSTEM=tty`, `DEVNAME=/dev/ttyUSB0`).
    pub const FTDI_TTY: &str =
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/ttyUSB0/tty/ttyUSB0";
}

/// Syspaths in [`HOTPLUG_FTDI`](super::fixtures::HOTPLUG_FTDI), parent first
/// (the order in which the kernel announces them).
pub mod hotplug_ftdi {
    /// FTDI FT232R 0403:6001, serial `AB0LQ4HZ`, on root port 3.
    pub const DEVICE: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3";
    /// Its only interface, bound to `ftdi_sio`.
    pub const INTERFACE: &str = "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0";
    /// The `usb-serial` port device.
    pub const USB_SERIAL_PORT: &str =
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/ttyUSB1";
    /// `ttyUSB1`.
    pub const TTY: &str =
        "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-3/1-3:1.0/ttyUSB1/tty/ttyUSB1";
    /// All of the above, parent first.
    pub const ALL: [&str; 4] = [DEVICE, INTERFACE, USB_SERIAL_PORT, TTY];
}
