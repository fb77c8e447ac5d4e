//! Any bytes through the line splitter, the parser and both renderers: no panic, every line
//! bounded, every reply newline-terminated.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moonlens::protocol::{parse, render, Line, LineBuffer, Response, MAX_LINE};

fuzz_target!(|data: &[u8]| {
    let mut lb = LineBuffer::default();
    let mut lines = Vec::new();
    lb.push(data, &mut lines);
    for l in lines {
        if let Line::Text(t) = l {
            assert!(t.len() <= MAX_LINE);
            let reply = match parse(&t) {
                Ok(req) => render(&req.form, &Response::Done),
                Err(e) => render(&e.form, &Response::Error(e.reason)),
            };
            assert!(reply.ends_with('\n'));
        }
    }
});
