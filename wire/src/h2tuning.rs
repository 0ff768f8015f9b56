//! HTTP/2 settings for the tunnel, shared by both ends.
//!
//! The defaults (64 KiB windows, 16 KiB frames) cap one stream at about
//! window/RTT; bulk transfers need far larger windows.

/// Per-stream receive window. Well below the connection window: bytes a
/// stalled stream holds count against both, so it takes 16 stalled streams
/// to stall a connection. 4 MiB measured as fast as 16 MiB on loopback.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Whole-connection receive window (shared by all streams).
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// Largest DATA frame either side sends.
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Bytes read from a socket per DATA frame sent.
pub const CHUNK: usize = 256 * 1024;
/// Concurrent tunnels one connection carries.
pub const MAX_STREAMS: u32 = 20_000;
/// Largest header block either side accepts (decoded, as HTTP/2 counts it).
/// shimgate's requests and responses carry a few short headers; h2's default
/// (16 MiB) would let a peer make the other end buffer that much per block.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Read buffer under TLS. rustls reads the socket at most 4 KiB at a time;
/// a buffer below it turns that into one syscall per this many bytes.
pub const TLS_READ_BUFFER: usize = 64 * 1024;
