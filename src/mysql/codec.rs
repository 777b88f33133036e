//! MySQL packet framing and the few packets keyward builds or reads by hand (ERR, the
//! COM_CHANGE_USER watch); handshake packets and auth plugins come from `mysql_common`. Sans I/O.

/// Largest packet accepted during the login (the handshake packets are small).
pub const MAX_LOGIN_PACKET: usize = 1 << 20;

/// The length of the next whole packet (4-byte header + payload) at the start of `buf`.
pub fn packet(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
    if len > max {
        return Err(format!("packet of {len} bytes is larger than {max}"));
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// A packet with sequence id `seq`.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// An ERR packet payload (protocol 4.1: with SQLSTATE).
pub fn err(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut st = state.as_bytes().to_vec();
    st.resize(5, b'0');
    p.extend_from_slice(&st[..5]);
    p.extend_from_slice(message.as_bytes());
    p
}

/// An ERR packet's code, SQLSTATE and message.
pub fn parse_err(payload: &[u8]) -> Option<(u16, String, String)> {
    if payload.first() != Some(&0xff) || payload.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let rest = &payload[3..];
    let (state, message) = match rest.split_first() {
        Some((b'#', tail)) if tail.len() >= 5 => {
            (String::from_utf8_lossy(&tail[..5]).into_owned(), &tail[5..])
        }
        _ => ("HY000".to_owned(), rest),
    };
    Some((code, state, String::from_utf8_lossy(message).into_owned()))
}

/// Tracks packet boundaries on the app's side of an established session, to find commands
/// (packets with sequence id 0) of a given type. Sans I/O.
#[derive(Debug, Default)]
pub struct CommandWatch {
    header: Vec<u8>,
    /// Payload bytes left in the current packet.
    left: usize,
    /// Whether the current packet is being dropped.
    dropping: bool,
    /// Whether the current packet's first payload byte is still to be seen (seq 0).
    first: bool,
    held: Vec<u8>,
    /// The app sent COM_QUIT: the server may now close as it likes.
    pub quit: bool,
}

/// COM_QUIT.
pub const COM_QUIT: u8 = 0x01;

impl CommandWatch {
    /// Feeds app bytes: appends what to forward to `out`, and returns how many commands of type
    /// `command` were dropped (whole packets).
    pub fn feed(&mut self, mut input: &[u8], command: u8, out: &mut Vec<u8>) -> usize {
        let mut dropped = 0;
        while !input.is_empty() {
            if self.left == 0 && !self.first {
                // Reading a header.
                let need = 4 - self.header.len();
                let take = need.min(input.len());
                self.header.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.header.len() < 4 {
                    continue;
                }
                let h = std::mem::take(&mut self.header);
                self.left = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
                if h[3] == 0 && self.left > 0 {
                    self.first = true;
                    self.held = h;
                } else {
                    out.extend_from_slice(&h);
                }
                continue;
            }
            if self.first {
                self.first = false;
                self.quit |= input[0] == COM_QUIT;
                self.dropping = input[0] == command;
                if self.dropping {
                    dropped += 1;
                    self.held.clear();
                } else {
                    out.append(&mut self.held);
                }
            }
            let take = self.left.min(input.len());
            if !self.dropping {
                out.extend_from_slice(&input[..take]);
            }
            self.left -= take;
            input = &input[take..];
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_need_their_whole_length() {
        let p = frame(3, b"hello");
        for cut in 0..p.len() {
            assert_eq!(packet(&p[..cut], 100), Ok(None));
        }
        assert_eq!(packet(&p, 100), Ok(Some(9)));
        assert!(packet(&frame(0, &[0; 200]), 100).is_err());
    }

    #[test]
    fn err_packets_round_trip() {
        let e = err(1045, "28000", "keyward: no");
        assert_eq!(
            parse_err(&e),
            Some((1045, "28000".to_owned(), "keyward: no".to_owned()))
        );
        assert_eq!(
            parse_err(&[0xff, 0x10, 0x04, b'B', b'a', b'd']),
            Some((1040, "HY000".to_owned(), "Bad".to_owned()))
        );
        assert_eq!(parse_err(&[0x00]), None);
    }

    #[test]
    fn change_user_commands_are_dropped_in_any_split() {
        let stream = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x11app\0\0"),
            frame(0, b"\x0e"),
            frame(1, b"\x11not-a-command"),
        ]
        .concat();
        let expected = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x0e"),
            frame(1, b"\x11not-a-command"),
        ]
        .concat();
        for cut in 0..stream.len() {
            let mut w = CommandWatch::default();
            let mut out = Vec::new();
            let n = w.feed(&stream[..cut], 0x11, &mut out) + w.feed(&stream[cut..], 0x11, &mut out);
            assert_eq!((n, &out), (1, &expected), "split at {cut}");
        }
    }

    #[test]
    fn com_quit_is_noticed_only_as_a_command() {
        let mut w = CommandWatch::default();
        let mut out = Vec::new();
        w.feed(
            &[frame(0, b"\x03SELECT 1"), frame(1, b"\x01data")].concat(),
            0x11,
            &mut out,
        );
        assert!(!w.quit);
        w.feed(&frame(0, &[COM_QUIT]), 0x11, &mut out);
        assert!(w.quit);
    }

    /// The fuzz target's property over a seeded corpus.
    #[test]
    fn change_user_watch_split_invariance_over_a_seeded_corpus() {
        let seed = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x11app\0\0"),
            frame(0, &[0x16; 70]),
        ]
        .concat();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..400 {
            let mut m = seed.clone();
            for _ in 0..rng.usize(0..6) {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            let mut whole = Vec::new();
            let n = CommandWatch::default().feed(&m, 0x11, &mut whole);
            let cut = rng.usize(..=m.len());
            let mut w = CommandWatch::default();
            let mut parts = Vec::new();
            let k = w.feed(&m[..cut], 0x11, &mut parts) + w.feed(&m[cut..], 0x11, &mut parts);
            assert_eq!((n, whole), (k, parts), "{m:?} at {cut}");
        }
    }
}
