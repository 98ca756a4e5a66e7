//! `OpenAiLlm` (feature `openai`) against a chat-completions server on 127.0.0.1 that each test
//! starts itself: streamed tokens and the request they answer (system prompt, conversation, model,
//! key), slow tokens, an HTTP error, a refused connection, a connection dropped mid-answer, a
//! malformed event, a silent server timing out, and cancellation (a cancelled promise, a stopped
//! stream, a despawned NPC) closing the connection.

mod common;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_lua_coroutines::prelude::*;
use bevy_lua_coroutines::{OpenAiConfig, OpenAiLlm};
use common::*;

/// A request the test server received.
struct Received {
    /// The request line and headers, lowercased.
    head: String,
    /// The JSON body.
    body: serde_json::Value,
}

/// What a test server saw: each request, and whether each connection was closed by the client
/// while the server waited (`true`) or the wait ran out (`false`).
struct Server {
    base_url: String,
    requests: mpsc::Receiver<Received>,
    closed: mpsc::Receiver<bool>,
}

/// Starts a server on 127.0.0.1 that answers every connection with `answer` on a thread of its
/// own. `answer` gets the connection and a sender to report whether the client closed it.
fn serve(answer: impl Fn(&mut TcpStream, &mpsc::Sender<bool>) + Send + Sync + Clone + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let (req_tx, requests) = mpsc::channel();
    let (closed_tx, closed) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let (req_tx, closed_tx, answer) = (req_tx.clone(), closed_tx.clone(), answer.clone());
            std::thread::spawn(move || {
                let Some(received) = read_request(&mut conn) else { return };
                let _ = req_tx.send(received);
                answer(&mut conn, &closed_tx);
            });
        }
    });
    Server { base_url, requests, closed }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
fn read_request(conn: &mut TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_lowercase());
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received { head, body: serde_json::from_slice(&body).ok()? })
}

/// The head of a streamed answer (the body runs until the connection closes).
const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

/// One streamed chunk carrying `text`.
fn token(text: &str) -> String {
    let chunk = serde_json::json!({ "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }] });
    format!("data: {chunk}\n\n")
}

/// Writes `text` and flushes (errors ignored: the client may be gone).
fn send(conn: &mut TcpStream, text: &str) {
    let _ = conn.write_all(text.as_bytes());
    let _ = conn.flush();
}

/// Waits (at most 3 s, far less than the client's own timeouts) for the client to close the
/// connection; reports whether it did.
fn await_close(conn: &mut TcpStream, closed: &mpsc::Sender<bool>) {
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0; 64];
    let result = loop {
        match conn.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break false;
            }
            Err(_) => break true, // reset by the client
        }
    };
    let _ = closed.send(result);
}

/// An app whose `llm` module talks to `config`.
fn openai_app(config: OpenAiConfig) -> App {
    let mut app = create_app();
    app.add_llm_service(OpenAiLlm::new(config).expect("the client starts"), LlmConfig::default());
    app
}

/// The configuration for `server`, with short timeouts for the tests.
fn config(server: &Server) -> OpenAiConfig {
    OpenAiConfig {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        timeout: Some(Duration::from_secs(60)),
        ..OpenAiConfig::new(server.base_url.clone(), "test-model")
    }
}

/// Updates (sleeping a little per frame: the answer comes from real sockets) until scripts printed
/// `lines` lines, for at most 20 s of wall time.
fn run_until_lines(app: &mut App, lines: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while printed(app).len() < lines && errors(app).is_empty() {
        assert!(Instant::now() < deadline, "scripts printed only {:?}", printed(app));
        app.update();
        std::thread::sleep(Duration::from_millis(1));
    }
    let errs = errors(app);
    assert!(errs.is_empty(), "unexpected script errors: {errs:#?}");
    printed(app)
}

/// Keeps updating while waiting (at most 4 s) for the server to report how a connection ended.
fn await_closed(app: &mut App, server: &Server) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(closed) = server.closed.try_recv() {
            return closed;
        }
        assert!(Instant::now() < deadline, "the server never finished waiting");
        app.update();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn tokens_stream_and_the_request_carries_the_conversation() {
    let server = serve(|conn, _| {
        send(conn, SSE_HEAD);
        send(conn, "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n");
        for t in ["Well", " met,", " traveller."] {
            send(conn, &token(t));
        }
        send(conn, ": keep-alive comment\n\n");
        send(conn, "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n");
    });
    let mut app = openai_app(OpenAiConfig { api_key: Some("sk-test".into()), ..config(&server) });
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        local chunks = {}
        local text = await(llm.streamGenerate("And you are?", function(t) chunks[#chunks + 1] = t end, {
            system = "You are a gruff innkeeper.",
            messages = {
                { role = "user", content = "Hello." },
                { role = "assistant", content = "What do you want?" },
            },
            temperature = 0.5,
            maxTokens = 40,
        }))
        print(#chunks, table.concat(chunks, "|"), text)
        print(await(llm.generateAsync("Again?")))
        "#,
    );
    let out = run_until_lines(&mut app, 2);
    assert_eq!(out, ["3\tWell| met,| traveller.\tWell met, traveller.", "Well met, traveller."]);

    let first = server.requests.recv_timeout(Duration::from_secs(5)).expect("a request");
    assert!(first.head.starts_with("post /v1/chat/completions http/1.1"), "{}", first.head);
    assert!(first.head.contains("authorization: bearer sk-test"), "the key is sent: {}", first.head);
    let expected = serde_json::json!({
        "model": "test-model",
        "stream": true,
        "temperature": 0.5,
        "max_tokens": 40,
        "messages": [
            { "role": "system", "content": "You are a gruff innkeeper." },
            { "role": "user", "content": "Hello." },
            { "role": "assistant", "content": "What do you want?" },
            { "role": "user", "content": "And you are?" },
        ],
    });
    assert_eq!(first.body, expected, "the request body");
    let second = server.requests.recv_timeout(Duration::from_secs(5)).expect("a second request");
    let expected = serde_json::json!({
        "model": "test-model", "stream": true, "messages": [{ "role": "user", "content": "Again?" }],
    });
    assert_eq!(second.body, expected, "no options: only the prompt");
}

#[test]
fn slow_tokens_arrive_one_by_one_while_frames_go_on() {
    let server = serve(|conn, _| {
        send(conn, SSE_HEAD);
        for t in ["one", " two", " three", " four"] {
            send(conn, &token(t));
            std::thread::sleep(Duration::from_millis(150));
        }
        send(conn, "data: [DONE]\n\n");
    });
    let mut app = openai_app(config(&server));
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        local frames = {}
        local text = await(llm.streamGenerate("count", function(t) frames[#frames + 1] = time.frame() end))
        print(text, #frames, frames[#frames] > frames[1])
        "#,
    );
    let out = run_until_lines(&mut app, 1);
    // Frames went on between the first token and the last (450 ms of the server's pauses apart).
    assert_eq!(out, ["one two three four\t4\ttrue"]);
}

#[test]
fn an_http_error_rejects_with_the_status_and_the_servers_message() {
    let server = serve(|conn, _| {
        let body = r#"{"error":{"message":"Invalid API key","type":"invalid_request_error"}}"#;
        let head = "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nConnection: close";
        send(conn, &format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    });
    let mut app = openai_app(config(&server));
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        print(pcall(await, llm.generateAsync("hi")))
        local got
        local status, err = llm.streamGenerate("hi", function(t, e) got = e end):awaitStatus()
        print(status, got == err)
        "#,
    );
    let out = run_until_lines(&mut app, 2);
    assert_eq!(
        out,
        [
            "false\tthe language-model service answered HTTP 401 Unauthorized: Invalid API key",
            "Rejected\ttrue"
        ]
    );
}

#[test]
fn a_refused_connection_rejects_saying_so() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let mut app = openai_app(OpenAiConfig::new(format!("http://127.0.0.1:{port}/v1"), "m"));
    spawn_script(&mut app, "scripts/npc.lua", r#"print(pcall(await, llm.generateAsync("hi")))"#);
    let out = run_until_lines(&mut app, 1);
    let expected = format!(
        "false\tcould not connect to the language-model service at http://127.0.0.1:{port}/v1/chat/completions"
    );
    assert!(out[0].starts_with(&expected), "{out:?}");
}

#[test]
fn a_connection_dropped_mid_answer_rejects_after_the_tokens_it_sent() {
    let server = serve(|conn, _| {
        send(conn, SSE_HEAD);
        send(conn, &token("The road"));
        // Closed here: no `[DONE]`, no finish reason.
    });
    let mut app = openai_app(config(&server));
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        local got = {}
        local status, err = llm.streamGenerate("where?", function(t, e) got[#got + 1] = t or e end):awaitStatus()
        print(status, err)
        print(table.concat(got, "|"))
        "#,
    );
    let out = run_until_lines(&mut app, 2);
    let closed = "the language-model service closed the connection before the answer ended";
    assert_eq!(out, [format!("Rejected\t{closed}"), format!("The road|{closed}")]);
}

#[test]
fn a_malformed_event_rejects_saying_so() {
    let server = serve(|conn, _| {
        send(conn, SSE_HEAD);
        send(conn, &token("ok"));
        send(conn, "data: {\"choices\": [ oops\n\n");
        await_close(conn, &mpsc::channel().0);
    });
    let mut app = openai_app(config(&server));
    spawn_script(&mut app, "scripts/npc.lua", r#"print(pcall(await, llm.generateAsync("hi")))"#);
    let out = run_until_lines(&mut app, 1);
    assert!(
        out[0].starts_with("false\tthe language-model service sent a malformed event (")
            && out[0].ends_with("oops"),
        "{out:?}"
    );
    let events = serve(|conn, _| {
        send(conn, SSE_HEAD);
        send(conn, "data: {\"object\": \"chat.completion.chunk\"}\n\n");
    });
    let mut app = openai_app(config(&events));
    spawn_script(&mut app, "scripts/npc.lua", r#"print(pcall(await, llm.generateAsync("hi")))"#);
    let out = run_until_lines(&mut app, 1);
    assert!(out[0].contains("malformed event (no `choices`)"), "{out:?}");
}

#[test]
fn a_silent_server_times_out_and_the_connection_closes() {
    let server = serve(|conn, closed| {
        send(conn, SSE_HEAD);
        send(conn, &token("Hmm"));
        await_close(conn, closed); // then nothing, until the client gives up
    });
    let mut app = openai_app(OpenAiConfig { idle_timeout: Duration::from_millis(300), ..config(&server) });
    spawn_script(&mut app, "scripts/npc.lua", r#"print(pcall(await, llm.generateAsync("hi")))"#);
    let out = run_until_lines(&mut app, 1);
    assert_eq!(out, ["false\tthe language-model service timed out: no token for 0.3 s"]);
    assert!(await_closed(&mut app, &server), "the client closed the connection after the timeout");
}

/// A server that sends one token, then waits in silence for the client to hang up.
fn one_token_then_silence() -> Server {
    serve(|conn, closed| {
        send(conn, SSE_HEAD);
        send(conn, &token("Once"));
        await_close(conn, closed);
    })
}

#[test]
fn cancelling_the_promise_closes_the_connection() {
    let server = one_token_then_silence();
    let mut app = openai_app(config(&server));
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"
        local p
        p = llm.streamGenerate("tell me", function(t) print(t); task.defer(function() p:cancel() end) end)
        "#,
    );
    assert_eq!(run_until_lines(&mut app, 1), ["Once"]);
    assert!(await_closed(&mut app, &server), "the connection stayed open after the promise was cancelled");
}

#[test]
fn stopping_from_on_chunk_closes_the_connection() {
    let server = one_token_then_silence();
    let mut app = openai_app(config(&server));
    spawn_script(
        &mut app,
        "scripts/npc.lua",
        r#"print(await(llm.streamGenerate("tell me", function(t) return false end)))"#,
    );
    assert_eq!(run_until_lines(&mut app, 1), ["Once"]);
    assert!(await_closed(&mut app, &server), "the connection stayed open after onChunk returned false");
}

#[test]
fn despawning_the_npc_closes_the_connection() {
    let server = one_token_then_silence();
    let mut app = openai_app(config(&server));
    let npc = spawn_script(&mut app, "scripts/npc.lua", r#"llm.streamGenerate("tell me", print)"#);
    assert_eq!(run_until_lines(&mut app, 1), ["Once"]);
    app.world_mut().despawn(npc);
    assert!(await_closed(&mut app, &server), "the connection stayed open after the NPC was despawned");
}
