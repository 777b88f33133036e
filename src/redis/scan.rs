//! A streaming scanner over the app's command stream (RESP arrays of bulk strings, and inline
//! commands), sans I/O. Every command is copied through unchanged as its bytes arrive (large
//! values are never buffered whole), except `AUTH` and `HELLO`: those are captured whole and
//! handed to a rewrite function, whose output takes their place. The replies keep their order
//! because each command still reaches the server exactly once.
//!
//! Bytes that are not RESP are passed through untouched from then on (the server answers
//! them with its own protocol error); interception only applies to well-formed commands.

/// Largest AUTH/HELLO command captured (longer ones pass through unchanged).
pub const MAX_CAPTURE: usize = 64 * 1024;
const MAX_INLINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a command.
    Start,
    /// Reading `*<n>\r\n`.
    ArrayLen,
    /// Reading `$<len>\r\n` of argument `index` (of `args`).
    BulkLen { index: u64, args: u64 },
    /// Inside the data (and its CRLF) of argument `index`.
    BulkData { index: u64, args: u64, left: u64 },
    /// An inline command line.
    Inline,
    /// Not RESP: everything passes through.
    Raw,
}

/// The scanner's state for one connection.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// Digits (and the line) being read.
    line: Vec<u8>,
    /// Bytes of the current command held back until its name is known, or captured whole.
    held: Vec<u8>,
    /// The current command's name bytes so far.
    name: Vec<u8>,
    /// Whether the current command is being captured (AUTH/HELLO).
    capture: Option<bool>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

fn intercepted(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"auth") || name.eq_ignore_ascii_case(b"hello")
}

/// Parses a whole captured command (RESP array of bulk strings) into its arguments.
pub fn args_of(command: &[u8]) -> Option<Vec<Vec<u8>>> {
    match redis_protocol::resp2::decode::decode(command).ok()?? {
        (redis_protocol::resp2::types::OwnedFrame::Array(items), used) if used == command.len() => {
            items
                .into_iter()
                .map(|f| match f {
                    redis_protocol::resp2::types::OwnedFrame::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect()
        }
        _ => None,
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Scanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        Self {
            state: State::Start,
            line: Vec::new(),
            held: Vec::new(),
            name: Vec::new(),
            capture: None,
        }
    }

    /// Feeds bytes read from the app; appends what to send upstream to `out`. `rewrite` gets
    /// each AUTH/HELLO command's arguments and returns the command to send instead.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        rewrite: &mut dyn FnMut(Vec<Vec<u8>>) -> Vec<u8>,
    ) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Raw => {
                    out.extend_from_slice(&input[i..]);
                    return;
                }
                State::Start => {
                    self.held.clear();
                    self.name.clear();
                    self.capture = None;
                    self.line.clear();
                    self.state = if input[i] == b'*' {
                        i += 1;
                        self.held.push(b'*');
                        State::ArrayLen
                    } else {
                        State::Inline
                    };
                }
                State::ArrayLen | State::BulkLen { .. } => {
                    let b = input[i];
                    i += 1;
                    self.emit(&[b], out);
                    if b != b'\n' {
                        self.line.push(b);
                        if self.line.len() > 24 {
                            self.go_raw(out);
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    let digits = match (self.state, line.as_slice()) {
                        (State::ArrayLen, [d @ .., b'\r']) => d,
                        (State::BulkLen { .. }, [b'$', d @ .., b'\r']) => d,
                        _ => {
                            self.go_raw(out);
                            continue;
                        }
                    };
                    let Some(n) = std::str::from_utf8(digits)
                        .ok()
                        .and_then(|t| t.parse::<i64>().ok())
                    else {
                        self.go_raw(out);
                        continue;
                    };
                    self.state = match self.state {
                        State::ArrayLen if n <= 0 => {
                            self.finish(out, rewrite);
                            State::Start
                        }
                        State::ArrayLen => State::BulkLen {
                            index: 0,
                            args: n as u64,
                        },
                        State::BulkLen { index, args } if n >= 0 => State::BulkData {
                            index,
                            args,
                            left: n as u64 + 2,
                        },
                        _ => {
                            self.go_raw(out);
                            continue;
                        }
                    };
                }
                State::BulkData { index, args, left } => {
                    let take = (left as usize).min(input.len() - i);
                    let chunk = &input[i..i + take];
                    i += take;
                    if index == 0 && self.capture.is_none() {
                        self.name.extend_from_slice(chunk);
                    }
                    self.emit(chunk, out);
                    let left = left - take as u64;
                    if index == 0 && self.capture.is_none() && (left == 0 || self.name.len() > 8) {
                        let name = self.name.strip_suffix(b"\r\n").unwrap_or(&self.name);
                        let capture = left == 0 && intercepted(name);
                        self.capture = Some(capture);
                        if !capture {
                            out.append(&mut self.held);
                        }
                    }
                    if left > 0 {
                        self.state = State::BulkData { index, args, left };
                    } else if index + 1 < args {
                        self.state = State::BulkLen {
                            index: index + 1,
                            args,
                        };
                    } else {
                        self.finish(out, rewrite);
                        self.state = State::Start;
                    }
                }
                State::Inline => {
                    let b = input[i];
                    i += 1;
                    self.held.push(b);
                    if b == b'\n' {
                        let line = std::mem::take(&mut self.held);
                        let words: Vec<Vec<u8>> = line
                            .split(|c| c.is_ascii_whitespace())
                            .filter(|w| !w.is_empty())
                            .map(|w| w.to_vec())
                            .collect();
                        match words.first() {
                            Some(name) if intercepted(name) => out.extend(rewrite(words)),
                            _ => out.extend_from_slice(&line),
                        }
                        self.state = State::Start;
                    } else if self.held.len() > MAX_INLINE {
                        self.go_raw(out);
                    }
                }
            }
        }
    }

    /// Bytes of the current command: held (name unknown or captured) or passed on.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        match self.capture {
            Some(false) => out.extend_from_slice(bytes),
            _ => {
                self.held.extend_from_slice(bytes);
                if self.held.len() > MAX_CAPTURE {
                    self.capture = Some(false);
                    out.append(&mut self.held);
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>, rewrite: &mut dyn FnMut(Vec<Vec<u8>>) -> Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        if self.capture == Some(true) {
            match args_of(&held) {
                Some(args) => out.extend(rewrite(args)),
                None => out.extend_from_slice(&held),
            }
        } else {
            out.extend_from_slice(&held);
        }
    }

    fn go_raw(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.state = State::Raw;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace_auth(args: Vec<Vec<u8>>) -> Vec<u8> {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        command(&[name.as_bytes(), b"REWRITTEN"])
    }

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = Scanner::new();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, &mut out, &mut replace_auth);
        }
        out
    }

    #[test]
    fn commands_pass_through_unchanged_in_any_split() {
        let stream = [
            command(&[b"SET", b"app:k", b"v"]),
            command(&[b"GET", b"app:k"]),
            b"PING\r\n".to_vec(),
            command(&[b"AUTHX", b"not-auth"]),
            command(&[b"SET", b"big", &[b'x'; 40_000]]),
        ]
        .concat();
        for cut in 0..stream.len().min(200) {
            let (a, b) = stream.split_at(cut);
            assert_eq!(run(&[a, b]), stream, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), stream);
    }

    #[test]
    fn auth_and_hello_are_replaced_in_place_in_any_split() {
        let stream = [
            command(&[b"PING"]),
            command(&[b"auth", b"user", b"app-password"]),
            command(&[b"GET", b"k"]),
            command(&[b"HELLO", b"3", b"AUTH", b"u", b"p"]),
            b"AUTH inline-pw\r\n".to_vec(),
        ]
        .concat();
        let expected = [
            command(&[b"PING"]),
            command(&[b"AUTH", b"REWRITTEN"]),
            command(&[b"GET", b"k"]),
            command(&[b"HELLO", b"REWRITTEN"]),
            command(&[b"AUTH", b"REWRITTEN"]),
        ]
        .concat();
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(run(&[a, b]), expected, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes), expected);
    }

    #[test]
    fn garbage_passes_through_raw() {
        let stream = b"*x\r\n*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n".to_vec();
        assert_eq!(run(&[&stream]), stream);
        let stream = b"*1\r\n:5\r\nAUTH p\r\n".to_vec();
        assert_eq!(run(&[&stream]), stream);
        let empty = b"*0\r\n*-1\r\n".to_vec();
        assert_eq!(run(&[&empty]), empty);
    }

    #[test]
    fn args_decode_with_redis_protocol() {
        assert_eq!(
            args_of(&command(&[b"AUTH", b"p"])),
            Some(vec![b"AUTH".to_vec(), b"p".to_vec()])
        );
        assert_eq!(args_of(b"*1\r\n:1\r\n"), None);
        assert_eq!(args_of(b"*1\r\n$1\r\na"), None);
    }

    /// The fuzz target's property over a seeded corpus: the same output however the input
    /// is split into reads.
    #[test]
    fn split_invariance_over_a_seeded_corpus() {
        let seed = [
            command(&[b"SET", b"app:k", b"v"]),
            command(&[b"AUTH", b"u", b"p"]),
            b"HELLO 3 AUTH a b\r\n".to_vec(),
            command(&[b"GET", &[b'x'; 300]]),
        ]
        .concat();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..400 {
            let mut m = seed.clone();
            let edits = rng.usize(0..6);
            crate::wire::mutate(&mut rng, &mut m, edits);
            let whole = run(&[&m]);
            let cut = rng.usize(..=m.len());
            assert_eq!(whole, run(&[&m[..cut], &m[cut..]]), "{m:?} at {cut}");
        }
    }
}
