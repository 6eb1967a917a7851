//! The encrypted channel: AES-256-GCM frames with per-direction keys, counter nonces,
//! a rekey ratchet and, for datagrams, a sliding replay window.
//!
//! # Key schedule
//!
//! From the handshake's 32-byte shared secret `ss` and 32-byte transcript hash `th`:
//!
//! ```text
//! secret[i2r][0] = derive_key(CHANNEL_I2R, [ss, th])
//! secret[r2i][0] = derive_key(CHANNEL_R2I, [ss, th])
//! secret[d][e+1] = derive_key(CHANNEL_RATCHET, [secret[d][e]])
//! key[d][e]      = derive_key(CHANNEL_AEAD_KEY, [secret[d][e], be32(e)])
//! ```
//!
//! The initiator sends with `i2r` and receives with `r2i`; the responder the reverse.
//! A secret is zeroized as soon as the next one is derived from it (forward secrecy
//! within the session).
//!
//! # Frames
//!
//! ```text
//! version (1) = 1 | kind (1): 1 stream, 2 datagram | epoch (4, BE) | seq (8, BE)
//! | len (4, BE) = payload length + 16 | ciphertext (len - 16) | GCM tag (16)
//! ```
//!
//! The 18-byte header is the associated data; the nonce is `0x00000000 ‖ be64(seq)`.
//! Within an epoch `seq` counts up from 0 and never repeats, and every epoch has its
//! own key, so no (key, nonce) pair is ever used twice. After a frame that brings
//! the epoch's frame count to `rekey_after_frames`, or its payload byte count to at
//! least `rekey_after_bytes`, the sender moves to epoch `e + 1`; a stream receiver
//! applies the same rule to what it accepts, so both stay in step. Running out of
//! epochs (2^32) is [`Error::Exhausted`], never a wrap.
//!
//! # Modes
//!
//! - [`Mode::Stream`]: frames must arrive in order, exactly once. Any frame that is
//!   not the next expected one, or fails authentication, is an error and poisons the
//!   receiver, as TLS closes a connection on a bad record.
//! - [`Mode::Datagram`]: frames may arrive out of order. The receiver holds the
//!   current and the previous epoch, each with a sliding replay window of
//!   `replay_window` sequence numbers; a frame is accepted at most once, a frame
//!   older than the window is rejected, and bad frames are dropped without closing
//!   the channel. A frame up to [`MAX_EPOCH_SKIP`] epochs ahead moves the receiver
//!   forward if it authenticates, so losing every frame of an epoch does not stall
//!   the channel.

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{AeadInOut, inout::InOutBuf},
};

use crate::{
    error::{Error, Result},
    kdf::{DerivedKey, derive_key, labels},
};

/// Bytes of frame header.
pub const FRAME_HEADER_LEN: usize = 18;
/// Bytes of GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes a frame adds to its payload.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + TAG_LEN;
/// The largest `max_payload_len` a configuration may set (16 MiB).
pub const MAX_PAYLOAD_LIMIT: usize = 16 << 20;
/// The largest replay window a configuration may set.
pub const MAX_REPLAY_WINDOW: u32 = 1 << 16;
/// Most payload bytes one epoch key may protect (`rekey_after_bytes`, 64 GiB): far
/// below AES-GCM's usage limits for one key.
pub const MAX_REKEY_AFTER_BYTES: u64 = 1 << 36;
/// How many epochs a datagram receiver may move forward on one frame: a datagram
/// channel survives the loss of every frame of up to `MAX_EPOCH_SKIP − 1`
/// consecutive epochs.
pub const MAX_EPOCH_SKIP: u32 = 8;

const FRAME_VERSION: u8 = 1;
const KIND_STREAM: u8 = 1;
const KIND_DATAGRAM: u8 = 2;

/// Which side of the handshake this end was; it picks the send and receive keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that sent the first handshake message.
    Initiator,
    /// The side that answered it.
    Responder,
}

/// Delivery model of the transport underneath.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In-order, exactly-once delivery (a TCP or QUIC stream).
    Stream,
    /// Unordered delivery with possible loss and duplication (datagrams).
    Datagram,
}

/// Channel parameters; both ends must use the same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelConfig {
    mode: Mode,
    max_payload_len: usize,
    rekey_after_frames: u64,
    rekey_after_bytes: u64,
    replay_window: u32,
}

impl Default for ChannelConfig {
    /// Stream mode, 1 MiB payloads, rekey every 2^20 frames or 2^32 bytes, a
    /// 1024-frame replay window.
    fn default() -> Self {
        Self {
            mode: Mode::Stream,
            max_payload_len: 1 << 20,
            rekey_after_frames: 1 << 20,
            rekey_after_bytes: 1 << 32,
            replay_window: 1024,
        }
    }
}

impl ChannelConfig {
    /// Sets the delivery mode.
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the largest payload a frame may carry (at most [`MAX_PAYLOAD_LIMIT`]).
    pub fn with_max_payload_len(mut self, len: usize) -> Self {
        self.max_payload_len = len;
        self
    }

    /// Rekeys after this many frames in one epoch (1 ..= 2^32).
    pub fn with_rekey_after_frames(mut self, frames: u64) -> Self {
        self.rekey_after_frames = frames;
        self
    }

    /// Rekeys once an epoch has carried at least this many payload bytes (>= 1).
    pub fn with_rekey_after_bytes(mut self, bytes: u64) -> Self {
        self.rekey_after_bytes = bytes;
        self
    }

    /// Sets the datagram replay window, in frames (64 ..= 2^16, a multiple of 64).
    pub fn with_replay_window(mut self, frames: u32) -> Self {
        self.replay_window = frames;
        self
    }

    /// The delivery mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The largest payload a frame may carry.
    pub fn max_payload_len(&self) -> usize {
        self.max_payload_len
    }

    fn validate(&self) -> Result<()> {
        if self.max_payload_len == 0 || self.max_payload_len > MAX_PAYLOAD_LIMIT {
            return Err(Error::InvalidConfig(
                "max_payload_len must be in 1 ..= 16 MiB",
            ));
        }
        if self.rekey_after_frames == 0 || self.rekey_after_frames > 1 << 32 {
            return Err(Error::InvalidConfig(
                "rekey_after_frames must be in 1 ..= 2^32",
            ));
        }
        if self.rekey_after_bytes == 0 || self.rekey_after_bytes > MAX_REKEY_AFTER_BYTES {
            return Err(Error::InvalidConfig(
                "rekey_after_bytes must be in 1 ..= 2^36",
            ));
        }
        if self.replay_window < 64
            || self.replay_window > MAX_REPLAY_WINDOW
            || !self.replay_window.is_multiple_of(64)
        {
            return Err(Error::InvalidConfig(
                "replay_window must be a multiple of 64 in 64 ..= 65536",
            ));
        }
        Ok(())
    }
}

/// The parsed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Stream or datagram.
    pub mode: Mode,
    /// Key epoch.
    pub epoch: u32,
    /// Sequence number within the epoch.
    pub seq: u64,
    /// Ciphertext length including the tag.
    pub len: u32,
}

impl FrameHeader {
    /// Parses the first [`FRAME_HEADER_LEN`] bytes of `bytes`, checking the version,
    /// the kind and that the frame is no larger than `max_payload_len` allows (and
    /// never larger than [`MAX_PAYLOAD_LIMIT`], whatever `max_payload_len` says).
    ///
    /// A stream reader calls this on the first 18 bytes to learn how many more to read
    /// ([`FrameHeader::frame_len`]) before any allocation.
    pub fn parse(bytes: &[u8], max_payload_len: usize) -> Result<Self> {
        let header = bytes
            .get(..FRAME_HEADER_LEN)
            .ok_or(Error::MalformedFrame("shorter than a frame header"))?;
        if header[0] != FRAME_VERSION {
            return Err(Error::Unsupported {
                what: "frame version",
                value: header[0].into(),
            });
        }
        let mode = match header[1] {
            KIND_STREAM => Mode::Stream,
            KIND_DATAGRAM => Mode::Datagram,
            other => {
                return Err(Error::Unsupported {
                    what: "frame kind",
                    value: other.into(),
                });
            }
        };
        let epoch = u32::from_be_bytes([header[2], header[3], header[4], header[5]]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&header[6..14]);
        let seq = u64::from_be_bytes(seq);
        let len = u32::from_be_bytes([header[14], header[15], header[16], header[17]]);
        let len_usize = len as usize;
        let max_payload_len = max_payload_len.min(MAX_PAYLOAD_LIMIT);
        if len_usize < TAG_LEN {
            return Err(Error::MalformedFrame("length shorter than the tag"));
        }
        if len_usize - TAG_LEN > max_payload_len {
            return Err(Error::FrameTooLarge {
                len: len_usize - TAG_LEN,
                max: max_payload_len,
            });
        }
        Ok(Self {
            mode,
            epoch,
            seq,
            len,
        })
    }

    /// Total length of the frame this header starts.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.len as usize
    }

    fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0] = FRAME_VERSION;
        out[1] = match self.mode {
            Mode::Stream => KIND_STREAM,
            Mode::Datagram => KIND_DATAGRAM,
        };
        out[2..6].copy_from_slice(&self.epoch.to_be_bytes());
        out[6..14].copy_from_slice(&self.seq.to_be_bytes());
        out[14..18].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// The keys of one direction in one epoch.
struct EpochKeys {
    epoch: u32,
    secret: DerivedKey,
    cipher: Aes256Gcm,
}

impl EpochKeys {
    fn new(epoch: u32, secret: DerivedKey) -> Self {
        let key = derive_key(
            labels::CHANNEL_AEAD_KEY,
            &[secret.as_bytes(), &epoch.to_be_bytes()],
        );
        let cipher = Aes256Gcm::new(key.as_bytes().into());
        Self {
            epoch,
            secret,
            cipher,
        }
    }

    /// The next epoch's keys, or `None` when the epoch counter is exhausted.
    fn next(&self) -> Option<Self> {
        let epoch = self.epoch.checked_add(1)?;
        Some(Self::new(
            epoch,
            derive_key(labels::CHANNEL_RATCHET, &[self.secret.as_bytes()]),
        ))
    }
}

fn nonce(seq: u64) -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n.into()
}

/// Per-epoch counters shared by the sender and the stream receiver's mirror of it.
struct Counter {
    keys: Option<EpochKeys>,
    seq: u64,
    bytes: u64,
}

impl Counter {
    /// Records one frame of `payload` bytes and ratchets when a limit is reached.
    fn advance(&mut self, payload: usize, config: &ChannelConfig) {
        self.seq += 1;
        self.bytes = self.bytes.saturating_add(payload as u64);
        if self.seq >= config.rekey_after_frames || self.bytes >= config.rekey_after_bytes {
            // `None` marks exhaustion: the next use fails with `Error::Exhausted`.
            self.keys = self.keys.as_ref().and_then(EpochKeys::next);
            self.seq = 0;
            self.bytes = 0;
        }
    }
}

/// The sending half of a channel.
pub struct ChannelSender {
    config: ChannelConfig,
    state: Counter,
}

/// The receiving half of a channel.
pub struct ChannelReceiver {
    config: ChannelConfig,
    inner: Receiver,
}

// One receiver per channel: the datagram variant's size does not matter.
#[allow(clippy::large_enum_variant)]
enum Receiver {
    Stream {
        state: Counter,
        poisoned: bool,
    },
    Datagram {
        current: DatagramEpoch,
        previous: Option<DatagramEpoch>,
    },
}

struct DatagramEpoch {
    keys: EpochKeys,
    window: ReplayWindow,
}

/// A bidirectional encrypted channel: a [`ChannelSender`] and a [`ChannelReceiver`].
pub struct SecureChannel {
    sender: ChannelSender,
    receiver: ChannelReceiver,
}

impl SecureChannel {
    /// Builds both halves from the handshake's shared secret and transcript hash.
    pub fn new(
        shared_secret: &[u8; 32],
        transcript_hash: &[u8; 32],
        role: Role,
        config: ChannelConfig,
    ) -> Result<Self> {
        config.validate()?;
        let i2r = derive_key(labels::CHANNEL_I2R, &[shared_secret, transcript_hash]);
        let r2i = derive_key(labels::CHANNEL_R2I, &[shared_secret, transcript_hash]);
        let (send, recv) = match role {
            Role::Initiator => (i2r, r2i),
            Role::Responder => (r2i, i2r),
        };
        let sender = ChannelSender {
            config: config.clone(),
            state: Counter {
                keys: Some(EpochKeys::new(0, send)),
                seq: 0,
                bytes: 0,
            },
        };
        let recv = EpochKeys::new(0, recv);
        let inner = match config.mode {
            Mode::Stream => Receiver::Stream {
                state: Counter {
                    keys: Some(recv),
                    seq: 0,
                    bytes: 0,
                },
                poisoned: false,
            },
            Mode::Datagram => Receiver::Datagram {
                current: DatagramEpoch {
                    keys: recv,
                    window: ReplayWindow::new(config.replay_window),
                },
                previous: None,
            },
        };
        Ok(Self {
            sender,
            receiver: ChannelReceiver { config, inner },
        })
    }

    /// Seals `payload` into a new frame.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        self.sender.seal(payload)
    }

    /// Seals `payload` and appends the frame to `out` (reusing its capacity).
    pub fn seal_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
        self.sender.seal_into(payload, out)
    }

    /// Opens a frame, returning its payload.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>> {
        self.receiver.open(frame)
    }

    /// Opens a frame in place, returning the payload as a sub-slice of `frame`.
    pub fn open_in_place<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8]> {
        self.receiver.open_in_place(frame)
    }

    /// Splits into independently usable halves (for separate reader and writer tasks).
    pub fn split(self) -> (ChannelSender, ChannelReceiver) {
        (self.sender, self.receiver)
    }
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureChannel")
            .field("sender", &self.sender)
            .field("receiver", &self.receiver)
            .finish()
    }
}

impl ChannelSender {
    /// Seals `payload` into a new frame.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(payload.len() + FRAME_OVERHEAD);
        self.seal_into(payload, &mut out)?;
        Ok(out)
    }

    /// Seals `payload` and appends the frame to `out`. On error `out` is unchanged.
    pub fn seal_into(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if payload.len() > self.config.max_payload_len {
            return Err(Error::FrameTooLarge {
                len: payload.len(),
                max: self.config.max_payload_len,
            });
        }
        let keys = self.state.keys.as_ref().ok_or(Error::Exhausted)?;
        let header = FrameHeader {
            mode: self.config.mode,
            epoch: keys.epoch,
            seq: self.state.seq,
            // max_payload_len <= 16 MiB, so this fits.
            len: (payload.len() + TAG_LEN) as u32,
        }
        .encode();
        let start = out.len();
        out.reserve(payload.len() + FRAME_OVERHEAD);
        out.extend_from_slice(&header);
        out.resize(start + FRAME_HEADER_LEN + payload.len(), 0);
        let body = &mut out[start + FRAME_HEADER_LEN..];
        let buf = InOutBuf::new(payload, body)
            .map_err(|_| Error::MalformedFrame("buffer length mismatch"))?;
        match keys
            .cipher
            .encrypt_inout_detached(&nonce(self.state.seq), &header, buf)
        {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                self.state.advance(payload.len(), &self.config);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::FrameTooLarge {
                    len: payload.len(),
                    max: self.config.max_payload_len,
                })
            }
        }
    }

    /// The epoch the next frame will be sealed in.
    pub fn epoch(&self) -> Option<u32> {
        self.state.keys.as_ref().map(|k| k.epoch)
    }
}

impl std::fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSender")
            .field("mode", &self.config.mode)
            .field("epoch", &self.epoch())
            .field("seq", &self.state.seq)
            .finish_non_exhaustive()
    }
}

impl ChannelReceiver {
    /// Opens a frame, returning its payload.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>> {
        let mut buf = frame.to_vec();
        let len = self.open_in_place(&mut buf)?.len();
        buf.copy_within(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len, 0);
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens a frame in place, returning the payload as a sub-slice of `frame`.
    ///
    /// On failure the contents of `frame` are unspecified.
    pub fn open_in_place<'a>(&mut self, frame: &'a mut [u8]) -> Result<&'a [u8]> {
        let header = FrameHeader::parse(frame, self.config.max_payload_len)?;
        if header.frame_len() != frame.len() {
            return Err(Error::MalformedFrame(
                "length field disagrees with the frame size",
            ));
        }
        if header.mode != self.config.mode {
            return Err(Error::MalformedFrame(
                "frame kind does not match the channel mode",
            ));
        }
        let payload_len = header.len as usize - TAG_LEN;
        let config = &self.config;
        match &mut self.inner {
            Receiver::Stream { state, poisoned } => {
                if *poisoned {
                    return Err(Error::ChannelPoisoned);
                }
                let Some(keys) = state.keys.as_ref() else {
                    *poisoned = true;
                    return Err(Error::Exhausted);
                };
                if header.epoch != keys.epoch || header.seq != state.seq {
                    *poisoned = true;
                    return Err(Error::UnexpectedSequence {
                        expected_epoch: keys.epoch,
                        expected_seq: state.seq,
                        epoch: header.epoch,
                        seq: header.seq,
                    });
                }
                if let Err(e) = decrypt(&keys.cipher, header.seq, frame) {
                    *poisoned = true;
                    return Err(e);
                }
                state.advance(payload_len, config);
            }
            Receiver::Datagram { current, previous } => {
                if header.seq >= config.rekey_after_frames {
                    return Err(Error::OutsideWindow {
                        epoch: header.epoch,
                        seq: header.seq,
                    });
                }
                let ahead = header.epoch.checked_sub(current.keys.epoch);
                if header.epoch == current.keys.epoch {
                    current.window.check(header.epoch, header.seq)?;
                    decrypt(&current.keys.cipher, header.seq, frame)?;
                    current.window.mark(header.seq);
                } else if let Some(prev) =
                    previous.as_mut().filter(|p| p.keys.epoch == header.epoch)
                {
                    prev.window.check(header.epoch, header.seq)?;
                    decrypt(&prev.keys.cipher, header.seq, frame)?;
                    prev.window.mark(header.seq);
                } else if ahead.is_some_and(|a| (1..=MAX_EPOCH_SKIP).contains(&a)) {
                    // Ratchet forward to the frame's epoch, tentatively: the keys
                    // are kept only if the frame authenticates. Every epoch up to
                    // `header.epoch` exists, so `next` cannot run out here.
                    let mut before: Option<EpochKeys> = None;
                    let mut keys = current.keys.next().ok_or(Error::Exhausted)?;
                    while keys.epoch < header.epoch {
                        let next = keys.next().ok_or(Error::Exhausted)?;
                        before = Some(std::mem::replace(&mut keys, next));
                    }
                    decrypt(&keys.cipher, header.seq, frame)?;
                    let mut next = DatagramEpoch {
                        keys,
                        window: ReplayWindow::new(config.replay_window),
                    };
                    next.window.mark(header.seq);
                    let old = std::mem::replace(current, next);
                    // The epoch just before the new one stays, for its late frames.
                    *previous = Some(match before {
                        Some(keys) => DatagramEpoch {
                            keys,
                            window: ReplayWindow::new(config.replay_window),
                        },
                        None => old,
                    });
                } else {
                    return Err(Error::OutsideWindow {
                        epoch: header.epoch,
                        seq: header.seq,
                    });
                }
            }
        }
        Ok(&frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + payload_len])
    }

    /// The newest epoch this receiver holds keys for.
    pub fn epoch(&self) -> Option<u32> {
        match &self.inner {
            Receiver::Stream { state, .. } => state.keys.as_ref().map(|k| k.epoch),
            Receiver::Datagram { current, .. } => Some(current.keys.epoch),
        }
    }
}

impl std::fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("mode", &self.config.mode)
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

fn decrypt(cipher: &Aes256Gcm, seq: u64, frame: &mut [u8]) -> Result<()> {
    let (header, rest) = frame.split_at_mut(FRAME_HEADER_LEN);
    let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let tag = aes_gcm::Tag::<aes_gcm::aead::consts::U16>::try_from(&tag[..])
        .map_err(|_| Error::Decrypt)?;
    cipher
        .decrypt_inout_detached(&nonce(seq), header, body.into(), &tag)
        .map_err(|_| Error::Decrypt)
}

/// A sliding window over sequence numbers: which of the last `size` were seen.
///
/// Memory is `size / 8` bytes, fixed at construction.
struct ReplayWindow {
    bits: Vec<u64>,
    size: u64,
    top: Option<u64>,
}

impl ReplayWindow {
    fn new(size: u32) -> Self {
        Self {
            bits: vec![0; (size / 64) as usize],
            size: size.into(),
            top: None,
        }
    }

    fn bit(&self, seq: u64) -> (usize, u64) {
        let i = seq % self.size;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn check(&self, epoch: u32, seq: u64) -> Result<()> {
        let Some(top) = self.top else { return Ok(()) };
        if seq > top {
            return Ok(());
        }
        if top - seq >= self.size {
            return Err(Error::OutsideWindow { epoch, seq });
        }
        let (word, mask) = self.bit(seq);
        if self.bits[word] & mask != 0 {
            Err(Error::Replay { epoch, seq })
        } else {
            Ok(())
        }
    }

    /// Marks `seq` seen; the caller has already `check`ed it.
    fn mark(&mut self, seq: u64) {
        match self.top {
            Some(top) if seq <= top => {}
            Some(top) if seq - top < self.size => {
                for s in top + 1..seq {
                    let (word, mask) = self.bit(s);
                    self.bits[word] &= !mask;
                }
                self.top = Some(seq);
                let (word, mask) = self.bit(seq);
                self.bits[word] &= !mask;
            }
            _ => {
                self.bits.iter_mut().for_each(|w| *w = 0);
                self.top = Some(seq);
            }
        }
        let (word, mask) = self.bit(seq);
        self.bits[word] |= mask;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel whose send and receive keys both sit at `epoch`.
    fn at_epoch(epoch: u32, config: ChannelConfig) -> (SecureChannel, SecureChannel) {
        let mut a =
            SecureChannel::new(&[1; 32], &[2; 32], Role::Initiator, config.clone()).unwrap();
        let mut b = SecureChannel::new(&[1; 32], &[2; 32], Role::Responder, config).unwrap();
        let secret = derive_key(labels::CHANNEL_I2R, &[b"epoch test"]);
        a.sender.state.keys = Some(EpochKeys::new(epoch, secret.clone()));
        match &mut b.receiver.inner {
            Receiver::Stream { state, .. } => state.keys = Some(EpochKeys::new(epoch, secret)),
            Receiver::Datagram { current, .. } => current.keys = EpochKeys::new(epoch, secret),
        }
        (a, b)
    }

    #[test]
    fn the_last_epoch_is_used_then_sealing_stops() {
        let config = ChannelConfig::default().with_rekey_after_frames(2);
        let (mut a, mut b) = at_epoch(u32::MAX, config);
        for i in 0..2u8 {
            let f = a.seal(&[i]).unwrap();
            assert_eq!(b.open(&f).unwrap(), [i]);
        }
        assert!(matches!(a.seal(b"x"), Err(Error::Exhausted)));
        assert!(
            matches!(a.seal(b"x"), Err(Error::Exhausted)),
            "stays exhausted, never wraps to epoch 0"
        );
    }

    #[test]
    fn a_datagram_receiver_never_wraps_its_epoch() {
        let config = ChannelConfig::default()
            .with_mode(Mode::Datagram)
            .with_rekey_after_frames(1);
        let (mut a, mut b) = at_epoch(u32::MAX, config.clone());
        let f = a.seal(b"last").unwrap();
        assert_eq!(b.open(&f).unwrap(), b"last");
        // A frame claiming epoch 0 (what a wrap would produce) is not accepted.
        let (mut fresh, _) = at_epoch(0, config);
        let wrapped = fresh.seal(b"wrapped").unwrap();
        assert!(b.open(&wrapped).is_err());
    }

    fn datagram(frames: u64) -> (SecureChannel, SecureChannel) {
        let config = ChannelConfig::default()
            .with_mode(Mode::Datagram)
            .with_rekey_after_frames(frames);
        let a = SecureChannel::new(&[1; 32], &[2; 32], Role::Initiator, config.clone()).unwrap();
        let b = SecureChannel::new(&[1; 32], &[2; 32], Role::Responder, config).unwrap();
        (a, b)
    }

    #[test]
    fn a_datagram_channel_survives_losing_whole_epochs() {
        // One frame per epoch: frame i is epoch i.
        let (mut a, mut b) = datagram(1);
        let f: Vec<Vec<u8>> = (0..12u8).map(|i| a.seal(&[i]).unwrap()).collect();
        assert_eq!(b.open(&f[0]).unwrap(), [0]);
        // Epoch 1 is lost entirely; epoch 2 still opens, and a late epoch-1 frame
        // too (it is the previous epoch now).
        assert_eq!(b.open(&f[2]).unwrap(), [2]);
        assert_eq!(b.open(&f[1]).unwrap(), [1]);
        // Epochs 3 to 2 + MAX_EPOCH_SKIP - 1 lost: the next one still opens.
        let far = 2 + MAX_EPOCH_SKIP as usize;
        assert_eq!(b.open(&f[far]).unwrap(), [far as u8]);
        assert_eq!(b.receiver.epoch(), Some(far as u32));
        // The epoch just before it was derived on the way and takes late frames;
        // older ones are gone.
        assert_eq!(b.open(&f[far - 1]).unwrap(), [far as u8 - 1]);
        assert!(b.open(&f[far - 2]).is_err());
        assert_eq!(b.open(&f[far + 1]).unwrap(), [far as u8 + 1]);
    }

    #[test]
    fn a_datagram_receiver_moves_forward_only_on_authentic_frames() {
        let (mut a, mut b) = datagram(1);
        let f: Vec<Vec<u8>> = (0..20u8).map(|i| a.seal(&[i]).unwrap()).collect();
        assert_eq!(b.open(&f[0]).unwrap(), [0]);
        // Too far ahead: refused, nothing derived.
        let beyond = MAX_EPOCH_SKIP as usize + 1;
        assert!(matches!(
            b.open(&f[beyond]),
            Err(Error::OutsideWindow { .. })
        ));
        // Within reach but forged: refused, and the receiver stays where it was.
        let mut forged = f[3].clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(b.open(&forged), Err(Error::Decrypt)));
        assert_eq!(b.receiver.epoch(), Some(0));
        assert_eq!(b.open(&f[1]).unwrap(), [1]);
    }

    #[test]
    fn rekey_limits_and_header_sizes_are_bounded() {
        let too_many_bytes =
            ChannelConfig::default().with_rekey_after_bytes(MAX_REKEY_AFTER_BYTES + 1);
        assert!(SecureChannel::new(&[1; 32], &[2; 32], Role::Initiator, too_many_bytes).is_err());
        let most = ChannelConfig::default().with_rekey_after_bytes(MAX_REKEY_AFTER_BYTES);
        assert!(SecureChannel::new(&[1; 32], &[2; 32], Role::Initiator, most).is_ok());
        // A caller's maximum above the protocol's is capped by the protocol's.
        let mut header = [0u8; FRAME_HEADER_LEN];
        header[0] = FRAME_VERSION;
        header[1] = KIND_STREAM;
        let len = (MAX_PAYLOAD_LIMIT + TAG_LEN + 1) as u32;
        header[14..18].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            FrameHeader::parse(&header, usize::MAX),
            Err(Error::FrameTooLarge { .. })
        ));
        let len = (MAX_PAYLOAD_LIMIT + TAG_LEN) as u32;
        header[14..18].copy_from_slice(&len.to_be_bytes());
        assert!(FrameHeader::parse(&header, usize::MAX).is_ok());
    }

    #[test]
    fn replay_window_slides() {
        let mut w = ReplayWindow::new(64);
        w.mark(10);
        assert!(matches!(w.check(0, 10), Err(Error::Replay { .. })));
        assert!(w.check(0, 9).is_ok());
        w.mark(73);
        assert!(matches!(w.check(0, 9), Err(Error::OutsideWindow { .. })));
        assert!(
            matches!(w.check(0, 10), Err(Error::Replay { .. })),
            "seq 10 is still inside the window"
        );
        assert!(w.check(0, 11).is_ok());
        w.mark(1000);
        assert!(matches!(w.check(0, 73), Err(Error::OutsideWindow { .. })));
        assert!(w.check(0, 999).is_ok());
    }
}
