//! A minimal QMP client (the QEMU Machine Protocol, JSON lines over a
//! socket) for the shared qemu-storage-daemon ([`super::fuse_shared`]):
//! the greeting, `qmp_capabilities`, commands with their replies matched by
//! `id`, and events kept until they are waited for (an event can arrive
//! before the reply of the command that caused it: `BLOCK_EXPORT_DELETED`
//! comes before `block-export-del`'s reply).
//!
//! Every read and write is bounded by the socket's timeouts: a daemon that
//! does not answer gives [`QmpError::Broken`], never a wait for ever.
//!
//! # References
//! - [QMP specification](https://www.qemu.org/docs/master/interop/qmp-spec.html)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The longest line read from the daemon (a reply or event is a few
/// hundred bytes; `query-*` output is not asked for).
const MAX_LINE: usize = 1 << 20;

/// How a QMP exchange failed.
#[derive(Debug)]
pub(crate) enum QmpError {
    /// qemu answered the command with an error: its `desc`.
    Refused(String),
    /// The connection is unusable: closed (the daemon exited), timed out,
    /// or out of step. Nothing more can be asked of this daemon.
    Broken(String),
}

impl std::fmt::Display for QmpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QmpError::Refused(desc) => f.write_str(desc),
            QmpError::Broken(why) => write!(f, "no answer over QMP: {why}"),
        }
    }
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub(crate) struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    /// Events read while waiting for something else.
    events: Vec<Value>,
    /// The start of a message a wait ran out in the middle of: the rest
    /// follows it on the stream.
    partial: Vec<u8>,
    next_id: u64,
    /// The bound on each exchange.
    timeout: Duration,
}

impl Qmp {
    /// Reads the greeting on `stream` and enters command mode
    /// (`qmp_capabilities`), each within `timeout`.
    pub(crate) fn handshake(stream: UnixStream, timeout: Duration) -> Result<Qmp, QmpError> {
        let reader = stream
            .try_clone()
            .map_err(|e| QmpError::Broken(format!("dup the QMP socket: {e}")))?;
        let mut qmp = Qmp {
            writer: stream,
            reader: BufReader::new(reader),
            events: Vec::new(),
            partial: Vec::new(),
            next_id: 0,
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let greeting = qmp.read_message(deadline)?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Broken(format!("no QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments`; its `return` value.
    pub(crate) fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let id = self.send(command, arguments)?;
        self.reply(id, command, Instant::now() + self.timeout)
    }

    /// Runs `commands` in order, sent together (one round trip instead of
    /// one each: qemu answers commands in the order they came); each
    /// one's result. A command after a refused one still runs (and is
    /// refused in turn where it needed what the first would have made).
    pub(crate) fn execute_all(
        &mut self,
        commands: Vec<(&str, Value)>,
    ) -> Vec<Result<Value, QmpError>> {
        let mut sent = Vec::new();
        for (command, arguments) in &commands {
            match self.send(command, arguments.clone()) {
                Ok(id) => sent.push(id),
                Err(e) => {
                    let why = e.to_string();
                    return commands
                        .iter()
                        .map(|_| Err(QmpError::Broken(why.clone())))
                        .collect();
                }
            }
        }
        let deadline = Instant::now() + self.timeout;
        let mut out = Vec::new();
        for (id, (command, _)) in sent.into_iter().zip(&commands) {
            let got = self.reply(id, command, deadline);
            let broken = match &got {
                Err(QmpError::Broken(why)) => Some(why.clone()),
                _ => None,
            };
            out.push(got);
            if let Some(why) = broken {
                out.resize_with(commands.len(), || Err(QmpError::Broken(why.clone())));
                break;
            }
        }
        out
    }

    /// Sends `command`; its id.
    fn send(&mut self, command: &str, arguments: Value) -> Result<u64, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line = json!({"execute": command, "arguments": arguments, "id": id}).to_string();
        line.push('\n');
        self.writer
            .set_write_timeout(Some(self.timeout))
            .and_then(|()| self.writer.write_all(line.as_bytes()))
            .map_err(|e| QmpError::Broken(format!("send {command}: {e}")))?;
        Ok(id)
    }

    /// The reply to command `id`, by `deadline` (events on the way are
    /// kept).
    fn reply(&mut self, id: u64, command: &str, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            let msg = self.read_message(deadline)?;
            if msg.get("event").is_some() {
                self.events.push(msg);
                continue;
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(QmpError::Broken(format!(
                    "a reply out of step with {command}: {msg}"
                )));
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            let desc = msg
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .map_or_else(|| msg.to_string(), str::to_owned);
            return Err(QmpError::Refused(desc));
        }
    }

    /// Waits, within `bound`, for the event `name` whose `data` satisfies
    /// `matches` (already received, or still to come); removes it.
    pub(crate) fn wait_event(
        &mut self,
        name: &str,
        matches: impl Fn(&Value) -> bool,
        bound: Duration,
    ) -> Result<(), QmpError> {
        let is_it = |e: &Value| {
            e.get("event").and_then(Value::as_str) == Some(name)
                && matches(e.get("data").unwrap_or(&Value::Null))
        };
        if let Some(at) = self.events.iter().position(is_it) {
            self.events.remove(at);
            return Ok(());
        }
        let deadline = Instant::now() + bound;
        loop {
            let msg = self.read_message(deadline)?;
            if is_it(&msg) {
                return Ok(());
            }
            if msg.get("event").is_some() {
                self.events.push(msg);
            } else {
                return Err(QmpError::Broken(format!(
                    "a reply while waiting for {name}: {msg}"
                )));
            }
        }
    }

    /// One JSON message, read by `deadline`.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        // Events no one waits for would pile up: only the last few are kept.
        if self.events.len() > 64 {
            self.events.drain(..32);
        }
        let mut line = std::mem::take(&mut self.partial);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Kept, so that the next read starts where this one
                // stopped instead of in the middle of a message.
                self.partial = line;
                return Err(QmpError::Broken(format!(
                    "no answer within {:?}",
                    self.timeout
                )));
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|e| QmpError::Broken(format!("set the read timeout: {e}")))?;
            let before = line.len();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) if line.len() == before => {
                    return Err(QmpError::Broken("the daemon closed the connection".into()));
                }
                Ok(_) if line.ends_with(b"\n") => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QmpError::Broken(format!("read: {e}"))),
            }
            if line.len() > MAX_LINE {
                return Err(QmpError::Broken(format!(
                    "a message longer than {MAX_LINE} bytes"
                )));
            }
        }
        serde_json::from_slice(&line).map_err(|e| {
            QmpError::Broken(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&line[..line.len().min(200)])
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake daemon on the other end of a socket pair: events before
    /// the reply are kept for `wait_event`; errors come back as `Refused`;
    /// a closed connection is `Broken`.
    #[test]
    fn replies_events_and_errors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            let mut line = String::new();
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("qmp_capabilities"), "{line}");
            writeln!(w, r#"{{"return": {{}}, "id": 1}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("block-export-del"), "{line}");
            writeln!(
                w,
                r#"{{"event": "BLOCK_EXPORT_DELETED", "data": {{"id": "e7"}}}}"#
            )
            .unwrap();
            writeln!(w, r#"{{"return": {{}}, "id": 2}}"#).unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            writeln!(
                w,
                r#"{{"error": {{"class": "GenericError", "desc": "Node d7 is in use"}}, "id": 3}}"#
            )
            .unwrap();
        });
        let mut q = Qmp::handshake(ours, Duration::from_secs(5)).unwrap();
        q.execute("block-export-del", json!({"id": "e7"})).unwrap();
        q.wait_event(
            "BLOCK_EXPORT_DELETED",
            |d| d["id"] == "e7",
            Duration::from_secs(5),
        )
        .unwrap();
        match q.execute("blockdev-del", json!({"node-name": "d7"})) {
            Err(QmpError::Refused(d)) => assert_eq!(d, "Node d7 is in use"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
        match q.execute("blockdev-del", json!({})) {
            Err(QmpError::Broken(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    /// Commands sent together get their own replies, in order, a
    /// refusal among them included.
    #[test]
    fn commands_sent_together() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            writeln!(w, r#"{{"return": {{}}, "id": 1}}"#).unwrap();
            let mut got = Vec::new();
            for _ in 0..3 {
                line.clear();
                r.read_line(&mut line).unwrap();
                got.push(line.clone());
            }
            // All three arrived before any reply.
            writeln!(w, r#"{{"return": {{}}, "id": 2}}"#).unwrap();
            writeln!(
                w,
                r#"{{"error": {{"class": "GenericError", "desc": "no"}}, "id": 3}}"#
            )
            .unwrap();
            writeln!(w, r#"{{"event": "X", "data": {{}}}}"#).unwrap();
            writeln!(w, r#"{{"return": {{"n": 4}}, "id": 4}}"#).unwrap();
            got
        });
        let mut q = Qmp::handshake(ours, Duration::from_secs(5)).unwrap();
        let out = q.execute_all(vec![("a", json!({})), ("b", json!({})), ("c", json!({}))]);
        let got = server.join().unwrap();
        assert!(got[2].contains(r#""execute":"c""#), "{got:?}");
        assert!(out[0].is_ok());
        assert!(matches!(&out[1], Err(QmpError::Refused(d)) if d == "no"));
        assert_eq!(out[2].as_ref().unwrap()["n"], 4);
        q.wait_event("X", |_| true, Duration::from_millis(10))
            .unwrap();
    }

    /// A wait that runs out in the middle of a message keeps what it read:
    /// the next one reads the message whole, not its tail as garbage.
    #[test]
    fn a_wait_cut_mid_message_keeps_its_start() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (half_sent, go_on) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            writeln!(w, r#"{{"return": {{}}, "id": 1}}"#).unwrap();
            write!(w, r#"{{"event": "BLOCK_EXPORT_DEL"#).unwrap();
            half_sent.send(()).unwrap();
            rx.recv().unwrap();
            writeln!(w, r#"ETED", "data": {{"id": "e1"}}}}"#).unwrap();
        });
        let mut q = Qmp::handshake(ours, Duration::from_secs(5)).unwrap();
        go_on.recv().unwrap();
        let first = q.wait_event("BLOCK_EXPORT_DELETED", |_| true, Duration::from_millis(100));
        assert!(
            matches!(&first, Err(QmpError::Broken(w)) if w.contains("no answer")),
            "{first:?}"
        );
        tx.send(()).unwrap();
        q.wait_event(
            "BLOCK_EXPORT_DELETED",
            |d| d["id"] == "e1",
            Duration::from_secs(5),
        )
        .unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        match Qmp::handshake(ours, Duration::from_millis(50)) {
            Err(QmpError::Broken(why)) => assert!(why.contains("no answer"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
