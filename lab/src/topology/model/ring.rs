//! The size of `lab wire`'s receive rings, as a topology may set it
//! (`shaping.ring_frames`): the policy the topology is checked against, the plan lays
//! out and `lab wire` maps ([`crate::wire::ring`]).

/// Bytes per slot: a 1500-byte MTU frame and the slot header fit, with room to spare.
pub const FRAME_SIZE: u32 = 2048;
/// Slots per ring unless the topology says (8 MiB of frames).
pub const DEFAULT_FRAMES: u32 = 4096;
/// The fewest and most slots a ring may have: a power of two in between (32 slots fill
/// one block; the most is 512 MiB of frames).
pub const MIN_FRAMES: u32 = 32;
pub const MAX_FRAMES: u32 = 1 << 18;

/// Whether `frames` is a ring size lab takes: a power of two from [`MIN_FRAMES`] to
/// [`MAX_FRAMES`].
pub fn valid_frames(frames: u32) -> bool {
    frames.is_power_of_two() && (MIN_FRAMES..=MAX_FRAMES).contains(&frames)
}
