//! The bounded tail of a command's output stream: whatever a command writes, the executor
//! keeps at most the last `TAIL_BYTES` of it (never unbounded memory), and says whether
//! anything was cut.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

/// How much of stdout and of stderr a command's result keeps: the last 64 KiB of each.
pub const TAIL_BYTES: usize = 64 * 1024;

/// The last `cap` bytes of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Tail {
    /// An empty tail keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Appends bytes, dropping the oldest past the cap. The buffer holds at most twice the
    /// cap between trims, so trimming costs amortised O(1) per byte.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.cap {
            self.truncated |= !self.buf.is_empty() || bytes.len() > self.cap;
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > 2 * self.cap {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
            self.truncated = true;
        }
    }

    /// Whether bytes were dropped.
    pub fn truncated(&self) -> bool {
        self.truncated || self.buf.len() > self.cap
    }

    /// The kept bytes as text: invalid UTF-8 is replaced, and a character cut in half at
    /// the start of a truncated tail is dropped.
    pub fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        let mut bytes = &self.buf[start..];
        if self.truncated() {
            let skip = bytes
                .iter()
                .take(3)
                .take_while(|&&b| b & 0b1100_0000 == 0b1000_0000)
                .count();
            bytes = &bytes[skip..];
        }
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// The last `lines` lines of the text, at most `max_chars` characters (for messages).
    pub fn last_lines(&self, lines: usize, max_chars: usize) -> String {
        let text = self.text();
        let trimmed = text.trim_end();
        let kept: Vec<&str> = trimmed.lines().rev().take(lines).collect();
        let joined = kept.into_iter().rev().collect::<Vec<_>>().join("\n");
        let count = joined.chars().count();
        if count <= max_chars {
            joined
        } else {
            let tail: String = joined.chars().skip(count - max_chars).collect();
            format!("…{tail}")
        }
    }
}

/// Reads `stream` to its end into `tail` (shared, so that what was read survives if the
/// reader is abandoned: a process that escaped the group may hold the pipe open).
pub async fn read_into(stream: Option<impl AsyncRead + Unpin>, tail: Arc<Mutex<Tail>>) {
    let Some(mut stream) = stream else {
        return;
    };
    let mut chunk = vec![0u8; 8 * 1024];
    // Bounded by the stream: it ends when every writer has exited.
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_stream_is_kept_whole() {
        let mut t = Tail::new(8);
        t.push(b"abc");
        t.push(b"de");
        assert_eq!((t.text().as_str(), t.truncated()), ("abcde", false));
    }

    #[test]
    fn a_long_stream_keeps_its_last_bytes_and_says_so() {
        let mut t = Tail::new(4);
        for chunk in [&b"ab"[..], b"cd", b"ef", b"gh", b"ij"] {
            t.push(chunk);
        }
        assert_eq!((t.text().as_str(), t.truncated()), ("ghij", true));
        let mut big = Tail::new(4);
        big.push(b"0123456789");
        assert_eq!((big.text().as_str(), big.truncated()), ("6789", true));
        let mut exact = Tail::new(4);
        exact.push(b"wxyz");
        assert_eq!((exact.text().as_str(), exact.truncated()), ("wxyz", false));
    }

    #[test]
    fn memory_stays_bounded_by_twice_the_cap() {
        let mut t = Tail::new(1024);
        for _ in 0..10_000 {
            t.push(&[b'x'; 100]);
            assert!(t.buf.len() <= 2 * 1024 + 100);
        }
        assert_eq!(t.text().len(), 1024);
    }

    #[test]
    fn a_character_cut_at_the_start_is_dropped() {
        let mut t = Tail::new(4);
        t.push("aé€".as_bytes()); // 1 + 2 + 3 bytes: the last 4 start inside é
        assert_eq!(t.text(), "€");
    }

    #[test]
    fn last_lines_are_for_messages() {
        let mut t = Tail::new(1024);
        t.push(b"one\ntwo\nthree\nfour\n");
        assert_eq!(t.last_lines(2, 100), "three\nfour");
        assert_eq!(t.last_lines(2, 6), "…e\nfour");
    }
}
