//! The app's messages after login, for resources that ask: statement events (audit level
//! `statements`: the SQL of each simple `Query` and extended `Parse`, never a `Bind`'s
//! values) and the `read_only` guard.
//!
//! `read_only: true` starts every session with `default_transaction_read_only=on`; what could
//! turn it off is refused: a statement that names `transaction_read_only` (`SET`, `RESET` of
//! it, `ALTER ... SET`), asks for `READ WRITE` (`BEGIN`, `START TRANSACTION`, `SET
//! TRANSACTION`, `SET SESSION CHARACTERISTICS`), calls `set_config` with anything but a plain
//! string literal as the name, hides a name in a Unicode escape (`U&"..."`), or runs any of
//! that inside a `DO` block. Any string that names `transaction_read_only` is refused too
//! (it could be code run elsewhere): a false positive on data is the price of the rule. A refused
//! statement is replaced by one the server itself answers with SQLSTATE 25006, so the
//! error arrives in order, however the app pipelines. The database's own grants remain the
//! real control: this is defence in depth.
//!
//! Only resources that ask pay for this: the filter holds a `Query` or `Parse` message until
//! it is whole (up to [`MAX_HELD`]) and streams everything else.

use crate::audit;

/// Largest `Query`/`Parse` message held whole; a longer one is refused under `read_only`
/// (it cannot be checked) and recorded cut short otherwise.
pub const MAX_HELD: usize = 1 << 20;
/// Longest SQL text in a statement event.
const MAX_EVENT_SQL: usize = 64 * 1024;

/// The statement the server runs instead of a refused one: it fails with 25006 in order.
const REFUSAL: &str = "DO $keyward$BEGIN RAISE EXCEPTION USING ERRCODE = '25006', MESSAGE = 'keyward: this resource is read_only: statements that change the transaction read-only mode are refused'; END$keyward$";

/// What the filter does with the app's messages.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Refuse what could turn read-only off.
    pub read_only: bool,
    /// Record statement events.
    pub statements: bool,
}

impl Guard {
    /// Whether any of it is on.
    pub fn active(&self) -> bool {
        self.read_only || self.statements
    }
}

/// What happens to the current message's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Streamed on as it comes.
    Pass,
    /// Held until whole (a Query or Parse).
    Hold,
    /// Dropped (the rest of a refused over-long message).
    Drop,
}

/// The filter's state for one session.
#[derive(Debug)]
pub struct AppFilter {
    guard: Guard,
    header: [u8; 5],
    have: usize,
    /// Body bytes left of the current message.
    left: usize,
    body: Body,
    held: Vec<u8>,
}

impl AppFilter {
    /// A filter at a message boundary.
    pub fn new(guard: Guard) -> Self {
        Self {
            guard,
            header: [0; 5],
            have: 0,
            left: 0,
            body: Body::Pass,
            held: Vec::new(),
        }
    }

    /// Follows `input`; appends what the server is to get to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            if self.left == 0 {
                let take = (5 - self.have).min(input.len() - i);
                self.header[self.have..self.have + take].copy_from_slice(&input[i..i + take]);
                self.have += take;
                i += take;
                if self.have < 5 {
                    break;
                }
                self.have = 0;
                let h = self.header;
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                self.left = len.saturating_sub(4);
                if matches!(h[0], b'Q' | b'P') {
                    self.body = Body::Hold;
                    self.held.clear();
                    self.held.extend_from_slice(&h);
                } else {
                    self.body = Body::Pass;
                    out.extend_from_slice(&h);
                }
                if self.left == 0 {
                    self.end(out);
                }
                continue;
            }
            let take = self.left.min(input.len() - i);
            let chunk = &input[i..i + take];
            i += take;
            self.left -= take;
            match self.body {
                Body::Pass => out.extend_from_slice(chunk),
                Body::Drop => {}
                Body::Hold => {
                    self.held.extend_from_slice(chunk);
                    if self.held.len() > MAX_HELD {
                        self.overflow(out);
                    }
                }
            }
            if self.left == 0 {
                self.end(out);
            }
        }
    }

    /// A held message outgrew [`MAX_HELD`]: under `read_only` it is refused (the refusal sent
    /// in its place, the rest of it dropped); otherwise recorded cut short and streamed on.
    fn overflow(&mut self, out: &mut Vec<u8>) {
        let tag = self.held[0];
        let sql = sql_of(&self.held).unwrap_or_default();
        let cut = &sql[..floor(&sql, MAX_EVENT_SQL)];
        if self.guard.read_only {
            audit::denied(audit::Denied::Statement { text: cut });
            out.extend_from_slice(&refusal(tag, None));
            self.body = Body::Drop;
        } else {
            record(tag, cut);
            out.extend_from_slice(&self.held);
            self.body = Body::Pass;
        }
        self.held = Vec::new();
    }

    /// The end of a message: a held one is checked, recorded, and passed on or refused.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.body != Body::Hold {
            return;
        }
        self.body = Body::Pass;
        let msg = std::mem::take(&mut self.held);
        let Some(sql) = sql_of(&msg) else {
            // Not a well-formed Query/Parse: the server refuses it itself.
            if self.guard.read_only {
                out.extend_from_slice(&refusal(msg[0], None));
            } else {
                out.extend_from_slice(&msg);
            }
            return;
        };
        let cut = &sql[..floor(&sql, MAX_EVENT_SQL)];
        if self.guard.read_only && refuses(&sql) {
            audit::denied(audit::Denied::Statement { text: cut });
            out.extend_from_slice(&refusal(msg[0], Some(&msg)));
        } else {
            record(msg[0], cut);
            out.extend_from_slice(&msg);
        }
        // Keep a small buffer for the next message, not the largest one seen.
        if msg.capacity() <= 64 * 1024 {
            self.held = msg;
            self.held.clear();
        }
    }
}

/// The largest char boundary of `s` at or below `at`.
fn floor(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn record(tag: u8, sql: &str) {
    let kind = if tag == b'Q' { "query" } else { "parse" };
    audit::statement(kind, Some(sql), None, None);
}

/// The SQL of a Query (`Q`) or Parse (`P`) message (whole, or its first part), read as
/// UTF-8 with anything else replaced (keywords are ASCII in every server encoding).
fn sql_of(msg: &[u8]) -> Option<String> {
    let body = msg.get(5..)?;
    let text = match msg[0] {
        b'Q' => body,
        b'P' => {
            let name_end = body.iter().position(|&b| b == 0)?;
            &body[name_end + 1..]
        }
        _ => return None,
    };
    let text = match text.iter().position(|&b| b == 0) {
        Some(end) => &text[..end],
        None => text,
    };
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The message sent instead of a refused Query or Parse: the same kind of message (a Parse
/// keeps its statement name and declares as many parameters, typed `bytea`, as the original
/// used, so the app's Bind still fits), running [`REFUSAL`].
fn refusal(tag: u8, original: Option<&[u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    if tag == b'P' {
        let (name, declared, used) = original
            .and_then(|m| parse_parts(&m[5..]))
            .unwrap_or_default();
        body.extend_from_slice(&name);
        body.push(0);
        body.extend_from_slice(REFUSAL.as_bytes());
        body.push(0);
        let count = declared.len().max(used).min(usize::from(u16::MAX));
        body.extend_from_slice(&(count as u16).to_be_bytes());
        for i in 0..count {
            let oid = declared
                .get(i)
                .copied()
                .filter(|&o| o != 0)
                .unwrap_or(BYTEA);
            body.extend_from_slice(&oid.to_be_bytes());
        }
    } else {
        body.extend_from_slice(REFUSAL.as_bytes());
        body.push(0);
    }
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(if tag == b'P' { b'P' } else { b'Q' });
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

const BYTEA: u32 = 17;

/// A Parse body's statement name, declared parameter types, and the highest `$n` its query
/// uses.
fn parse_parts(body: &[u8]) -> Option<(Vec<u8>, Vec<u32>, usize)> {
    let name_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[name_end + 1..];
    let query_end = rest.iter().position(|&b| b == 0)?;
    let query = &rest[..query_end];
    let types = &rest[query_end + 1..];
    let n = usize::from(u16::from_be_bytes([*types.first()?, *types.get(1)?]));
    let declared = types[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let used = tokens(&String::from_utf8_lossy(query))
        .iter()
        .filter_map(|t| match t {
            Tok::Param(n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Some((body[..name_end].to_vec(), declared, used))
}

/// Whether a startup packet's `options` could set the read-only mode (`-c
/// default_transaction_read_only=off`, `--default-transaction-read-only=off`).
pub fn options_touch_read_only(options: &str) -> bool {
    options
        .to_ascii_lowercase()
        .replace('-', "_")
        .contains("transaction_read_only")
}

/// Whether `sql` (one or more statements) could change the transaction read-only mode.
pub fn refuses(sql: &str) -> bool {
    let toks = tokens(sql);
    toks.split(|t| *t == Tok::Punct(';')).any(statement_refused)
}

fn statement_refused(t: &[Tok]) -> bool {
    let first = match t.first() {
        Some(Tok::Word(w)) => w.as_str(),
        _ => "",
    };
    if first == "show" {
        return false;
    }
    // A DO block's body is code: its strings are checked as statements too.
    if first == "do"
        && t.iter()
            .any(|tok| matches!(tok, Tok::Str(body, _) if code_refused(body, 0)))
    {
        return true;
    }
    for (i, tok) in t.iter().enumerate() {
        match tok {
            Tok::Word(w) | Tok::Quoted(w) | Tok::Str(w, _) if names_read_only(w) => return true,
            Tok::Unicode => return true,
            Tok::Word(w) if w == "read" => {
                if matches!(t.get(i + 1), Some(Tok::Word(n)) if n == "write") {
                    return true;
                }
            }
            Tok::Word(w) | Tok::Quoted(w) if w == "set_config" => {
                // Only `set_config('plain literal', ...)`: a computed name could be anything.
                let plain = matches!(
                    (t.get(i + 1), t.get(i + 2), t.get(i + 3)),
                    (
                        Some(Tok::Punct('(')),
                        Some(Tok::Str(_, false)),
                        Some(Tok::Punct(','))
                    )
                );
                if !plain {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// [`refuses`] for code, where every string may be code again (`EXECUTE '...'` in a DO
/// block), a few levels deep.
fn code_refused(sql: &str, depth: u8) -> bool {
    refuses(sql)
        || (depth < 4
            && tokens(sql)
                .iter()
                .any(|t| matches!(t, Tok::Str(s, _) if code_refused(s, depth + 1))))
}

fn names_read_only(text: &str) -> bool {
    text.to_ascii_lowercase().contains("transaction_read_only")
}

/// A SQL token, as far as the guard needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A keyword or unquoted identifier, lower case.
    Word(String),
    /// A `"quoted"` identifier's text.
    Quoted(String),
    /// A string literal's text; `true` when it had escapes (`E'...'`).
    Str(String, bool),
    /// A `U&'...'` or `U&"..."` with escapes: could spell anything.
    Unicode,
    /// `$n`.
    Param(usize),
    /// Any other character.
    Punct(char),
}

/// Tokens of `sql`: comments (`--`, nested `/* */`) skipped; strings (standard, `E''`,
/// dollar-quoted), quoted identifiers, words and parameters.
fn tokens(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (c == b'u' || c == b'U')
            && b.get(i + 1) == Some(&b'&')
            && matches!(b.get(i + 2), Some(b'\'' | b'"'))
        {
            let (text, next) = quoted(b, i + 2, false);
            out.push(if text.contains('\\') {
                Tok::Unicode
            } else if b[i + 2] == b'"' {
                Tok::Quoted(text)
            } else {
                Tok::Str(text, false)
            });
            i = next;
        } else if c == b'\'' {
            let escapes = matches!(out.last(), Some(Tok::Word(w)) if w == "e")
                && i > 0
                && matches!(b[i - 1], b'e' | b'E');
            if escapes {
                out.pop();
            }
            let (text, next) = quoted(b, i, escapes);
            out.push(Tok::Str(text, escapes));
            i = next;
        } else if c == b'"' {
            let (text, next) = quoted(b, i, false);
            out.push(Tok::Quoted(text));
            i = next;
        } else if c == b'$' {
            let mut j = i + 1;
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                let n = sql[i + 1..j].parse().unwrap_or(usize::MAX);
                out.push(Tok::Param(n.min(usize::from(u16::MAX))));
                i = j;
                continue;
            }
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if b.get(j) == Some(&b'$') {
                let tag = &sql[i..=j];
                let body_start = j + 1;
                let (text, next) = match sql[body_start..].find(tag) {
                    Some(at) => (
                        &sql[body_start..body_start + at],
                        body_start + at + tag.len(),
                    ),
                    None => (&sql[body_start..], b.len()),
                };
                out.push(Tok::Str(text.to_owned(), false));
                i = next;
            } else {
                out.push(Tok::Punct('$'));
                i += 1;
            }
        } else if ident(c) {
            let mut j = i;
            while j < b.len() && ident(b[j]) {
                j += 1;
            }
            out.push(Tok::Word(sql[i..j].to_ascii_lowercase()));
            i = j;
        } else {
            let ch = sql[i..].chars().next().unwrap_or('?');
            out.push(Tok::Punct(ch));
            i += ch.len_utf8();
        }
    }
    out
}

/// The text of a quoted token starting at `b[at]` (its quote character), doubled quotes
/// read as one, `\` escaping the next byte when `escapes`; and where the token ends.
fn quoted(b: &[u8], at: usize, escapes: bool) -> (String, usize) {
    let q = b[at];
    let mut text = Vec::new();
    let mut i = at + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if escapes => {
                text.push(b'\\');
                if let Some(&n) = b.get(i + 1) {
                    text.push(n);
                }
                i += 2;
            }
            c if c == q && b.get(i + 1) == Some(&q) => {
                text.push(q);
                i += 2;
            }
            c if c == q => return (String::from_utf8_lossy(&text).into_owned(), i + 1),
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_turn_read_only_off_is_refused() {
        let refused = [
            "SET default_transaction_read_only = off",
            "set SESSION default_transaction_read_only TO 'off'",
            "SET LOCAL transaction_read_only = off",
            "SET \"default_transaction_read_only\" = off",
            "select 1; SET default_transaction_read_only=off",
            "BEGIN READ WRITE",
            "begin transaction isolation level serializable, read /* c */ write",
            "START TRANSACTION READ\n WRITE",
            "SET TRANSACTION READ WRITE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
            "SELECT set_config('default_transaction_read_only', 'off', false)",
            "SELECT pg_catalog.set_config('transaction_read_only', 'off', true)",
            "SELECT set_config('default_transaction' || '_read_only', 'off', false)",
            "SELECT set_config(E'default_transaction\\x5fread_only', 'off', false)",
            "SELECT set_config($1, 'off', false)",
            "SET U&\"default\\005ftransaction_read_only\" = off",
            "ALTER ROLE app SET default_transaction_read_only = off",
            "RESET default_transaction_read_only",
            "RESET transaction_read_only",
            "SELECT $$ SET default_transaction_read_only = off $$ AS doc",
            "DO $$BEGIN EXECUTE 'SET TRANSACTION READ WRITE'; END$$",
            "do $x$ begin perform set_config(current_user, 'off', false); end $x$",
        ];
        for sql in refused {
            assert!(refuses(sql), "{sql}");
        }
        let allowed = [
            "SELECT * FROM t WHERE note = 'read write'",
            "SELECT 'x' -- SET default_transaction_read_only = off",
            "SELECT 1 /* BEGIN READ WRITE */",
            "BEGIN",
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET search_path = app",
            "SELECT set_config('search_path', 'app', false)",
            "SHOW default_transaction_read_only",
            "RESET ALL",
            "INSERT INTO t VALUES ($1, $2)",
            "SELECT 'read write'",
            "DO $$BEGIN RAISE NOTICE 'read only here'; END$$",
        ];
        for sql in allowed {
            assert!(!refuses(sql), "{sql}");
        }
        assert!(options_touch_read_only(
            "-c default_transaction_read_only=off"
        ));
        assert!(options_touch_read_only(
            "--default-transaction-read-only=off"
        ));
        assert!(!options_touch_read_only("-c search_path=app"));
    }

    fn query(sql: &str) -> Vec<u8> {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        m
    }

    fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        body.extend_from_slice(&(types.len() as u16).to_be_bytes());
        for t in types {
            body.extend_from_slice(&t.to_be_bytes());
        }
        let mut m = vec![b'P'];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    fn run(guard: Guard, stream: &[u8], cut: usize) -> Vec<u8> {
        let mut f = AppFilter::new(guard);
        let mut out = Vec::new();
        let (a, b) = stream.split_at(cut);
        f.feed(a, &mut out);
        f.feed(b, &mut out);
        out
    }

    #[test]
    fn the_filter_passes_messages_unchanged_and_replaces_refused_ones_in_place() {
        let guard = Guard {
            read_only: true,
            statements: true,
        };
        let sync = [b'S', 0, 0, 0, 4];
        let ok = [
            query("SELECT 1"),
            parse("s1", "SELECT $1::int", &[]),
            sync.to_vec(),
        ]
        .concat();
        for cut in 0..ok.len() {
            assert_eq!(run(guard, &ok, cut), ok, "cut at {cut}");
        }
        let bad = [
            query("SELECT 1"),
            parse("s2", "SET transaction_read_only = $1", &[]),
            sync.to_vec(),
            query("BEGIN READ WRITE"),
        ]
        .concat();
        let want = [
            query("SELECT 1"),
            parse("s2", REFUSAL, &[BYTEA]),
            sync.to_vec(),
            query(REFUSAL),
        ]
        .concat();
        for cut in 0..bad.len() {
            assert_eq!(run(guard, &bad, cut), want, "cut at {cut}");
        }
        // Declared types are kept, and a longer message than can be held is refused whole.
        assert_eq!(
            run(guard, &parse("", "BEGIN READ WRITE", &[23]), 3),
            parse("", REFUSAL, &[23])
        );
        let huge = query(&format!("SELECT '{}'", "x".repeat(MAX_HELD)));
        let out = run(guard, &[huge.clone(), sync.to_vec()].concat(), 100);
        assert_eq!(out, [query(REFUSAL), sync.to_vec()].concat());
        let relaxed = Guard {
            read_only: false,
            statements: true,
        };
        assert_eq!(run(relaxed, &huge, 7), huge, "statements only: streamed on");
    }
}
