//! Wire capture: every frame on one interface, counted per direction ([`count`], pure),
//! read from an AF_PACKET socket in the interface's namespace ([`socket`]) and kept for
//! the anatomy, optionally written to a pcap file ([`pcap`]). The kernel's own interface counters (netlink link
//! stats) are read at the same points, so the two can be compared; so are the host's own
//! drops, which no capture sees ([`stack`]).

pub mod count;
pub mod pcap;
pub mod socket;
pub mod stack;

pub use count::{Counts, Dir, EdgeFrame, Kernel, Outside};
pub use socket::{Capture, Frames, kernel_counters};
