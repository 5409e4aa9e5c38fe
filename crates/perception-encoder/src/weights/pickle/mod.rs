//! A restricted unpickler for PyTorch state dicts.
//!
//! It accepts what `torch.load(weights_only=True)` accepts for a state dict: dicts (plain and
//! `collections.OrderedDict`), lists, tuples, strings, numbers, booleans, `None`, and tensors
//! rebuilt by `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` from typed storages.
//! Any other global is an error that names it; nothing is ever executed.

mod torch;

use std::collections::HashMap;

use super::storage::StorageDType;
pub(crate) use torch::PickledTensor;
use torch::{call, persistent_load, resolve_global, Global};

/// A decoded pickle value.
#[derive(Debug, Clone)]
#[allow(dead_code)] // payloads of plain values are only read through Debug in diagnostics
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A global the unpickler allows, before it is called.
    Global(Global),
    Storage {
        dtype: StorageDType,
        key: String,
        numel: usize,
    },
    Tensor(PickledTensor),
    /// A storage of integers or booleans (`position_ids`, `num_batches_tracked`): never a weight.
    IntegerStorage(&'static str),
    /// A tensor over an integer storage; state dicts carry such buffers, which are not weights.
    IntegerTensor(&'static str),
}

enum Item {
    Mark,
    V(Value),
}

/// Deepest nesting of containers accepted. A state dict nests a few levels; a pickle nested
/// a million deep would overflow the native stack when the value is dropped or cloned.
pub(crate) const MAX_DEPTH: u32 = 200;
/// Values copied by memo reads (BINGET) and DUP, in nodes (strings and bytes count a node per 16
/// bytes). Real state dicts copy a few per tensor; a pickle that doubles a list through the memo
/// would otherwise grow exponentially (200 bytes -> 3.9 GB).
pub(crate) const MAX_COPIED: u64 = 8 << 20;

/// Size and nesting of a value on the stack or in the memo, kept beside it.
#[derive(Debug, Clone, Copy, Default)]
struct Meta {
    depth: u32,
    weight: u64,
}

impl Meta {
    fn leaf(v: &Value) -> Meta {
        let bytes = match v {
            Value::Str(s) => s.len(),
            Value::Bytes(b) => b.len(),
            _ => 0,
        };
        Meta { depth: 0, weight: 1 + bytes as u64 / 16 }
    }
    fn join(self, other: Meta) -> Meta {
        Meta { depth: self.depth.max(other.depth), weight: self.weight.saturating_add(other.weight) }
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Item>,
    /// `metas[i]` describes `stack[i]` (a default for a MARK).
    metas: Vec<Meta>,
    memo: HashMap<u32, (Value, Meta)>,
    /// What this opcode popped, so the container it pushes (or fills) knows its size and depth.
    popped: Option<Meta>,
    copied: u64,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("pickle ends early")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').ok_or("pickle ends inside a text line")?;
        let s = String::from_utf8(rest[..n].to_vec()).map_err(|_| "non-UTF-8 name in pickle")?;
        self.pos += n + 1;
        Ok(s)
    }
    fn push(&mut self, v: Value) {
        let meta = match self.popped.take() {
            Some(children) if matches!(v, Value::Tuple(_) | Value::List(_) | Value::Dict(_)) => {
                Meta { depth: children.depth + 1, weight: children.weight.saturating_add(1) }
            }
            _ => Meta::leaf(&v),
        };
        self.push_meta(v, meta);
    }
    fn push_meta(&mut self, v: Value, meta: Meta) {
        self.stack.push(Item::V(v));
        self.metas.push(meta);
    }
    fn note_popped(&mut self, meta: Meta) {
        self.popped = Some(self.popped.map_or(meta, |m| m.join(meta)));
    }
    /// After an opcode filled the container on top with what it popped (APPEND, SETITEM...).
    fn absorb(&mut self) {
        if let (Some(children), Some(top)) = (self.popped.take(), self.metas.last_mut()) {
            top.depth = top.depth.max(children.depth + 1);
            top.weight = top.weight.saturating_add(children.weight);
        }
    }
    /// Account for a copy of a value of `meta`'s size.
    fn copy(&mut self, meta: Meta) -> Result<(), String> {
        self.copied = self.copied.saturating_add(meta.weight);
        if self.copied > MAX_COPIED {
            return Err(format!("the pickle copies more than {MAX_COPIED} values through its memo (a memo bomb?)"));
        }
        Ok(())
    }
    fn pop(&mut self) -> Result<Value, String> {
        let meta = self.metas.pop().unwrap_or_default();
        match self.stack.pop() {
            Some(Item::V(v)) => {
                self.note_popped(meta);
                Ok(v)
            }
            Some(Item::Mark) => Err("unexpected MARK on the pickle stack".into()),
            None => Err("pickle stack underflow".into()),
        }
    }
    fn push_mark(&mut self) {
        self.stack.push(Item::Mark);
        self.metas.push(Meta::default());
    }
    fn top(&mut self) -> Result<&mut Value, String> {
        match self.stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => Err("pickle stack underflow".into()),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        // An empty container still gets a level.
        self.note_popped(Meta::default());
        loop {
            let meta = self.metas.pop().unwrap_or_default();
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v)) => {
                    self.note_popped(meta);
                    out.push(v)
                }
                None => return Err("MARK not found on the pickle stack".into()),
            }
        }
        out.reverse();
        Ok(out)
    }
    fn memo_get(&mut self, idx: u32) -> Result<(), String> {
        let meta = self.memo.get(&idx).map(|(_, m)| *m).ok_or_else(|| format!("pickle memo {idx} is unset"))?;
        self.copy(meta)?;
        let v = self.memo.get(&idx).map(|(v, _)| v.clone()).ok_or("pickle memo vanished")?;
        self.push_meta(v, meta);
        Ok(())
    }
    fn memo_put(&mut self, idx: u32) -> Result<(), String> {
        let meta = self.metas.last().copied().unwrap_or_default();
        let v = match self.stack.last() {
            Some(Item::V(v)) => v,
            _ => return Err("memo of an empty stack".into()),
        };
        let v = v.clone();
        self.copy(meta)?;
        self.memo.insert(idx, (v, meta));
        Ok(())
    }
}

/// Run the restricted unpickler over `data` and return the top-level object.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value, String> {
    let mut m =
        Machine { data, pos: 0, stack: Vec::new(), metas: Vec::new(), memo: HashMap::new(), popped: None, copied: 0 };
    loop {
        if m.metas.last().is_some_and(|t| t.depth > MAX_DEPTH) {
            return Err(format!("the pickle nests containers more than {MAX_DEPTH} deep"));
        }
        m.popped = None;
        let op = m.u8()?;
        match op {
            0x80 => {
                m.u8()?; // PROTO
            }
            0x95 => {
                m.take(8)?; // FRAME
            }
            b'.' => return m.pop(), // STOP
            b'(' => m.push_mark(),
            b'N' => m.push(Value::None),
            0x88 => m.push(Value::Bool(true)),
            0x89 => m.push(Value::Bool(false)),
            b'J' => {
                let v = m.u32()? as i32;
                m.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = m.u8()?;
                m.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = m.u16()?;
                m.push(Value::Int(v as i64))
            }
            0x8a => {
                // LONG1: little-endian two's complement
                let n = m.u8()? as usize;
                let b = m.take(n)?;
                if n > 8 {
                    return Err("integer too large in pickle".into());
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                m.push(Value::Int(v))
            }
            b'G' => {
                let b = m.take(8)?;
                m.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))
            }
            b'X' => {
                let n = m.u32()? as usize;
                let s = std::str::from_utf8(m.take(n)?).map_err(|_| "invalid UTF-8 string in pickle")?;
                m.push(Value::Str(s.to_string()))
            }
            0x8c => {
                let n = m.u8()? as usize;
                let s = std::str::from_utf8(m.take(n)?).map_err(|_| "invalid UTF-8 string in pickle")?;
                m.push(Value::Str(s.to_string()))
            }
            b'U' => {
                let n = m.u8()? as usize;
                let b = m.take(n)?.to_vec();
                m.push(Value::Str(String::from_utf8_lossy(&b).into_owned()))
            }
            b'T' => {
                let n = m.u32()? as usize;
                let b = m.take(n)?.to_vec();
                m.push(Value::Str(String::from_utf8_lossy(&b).into_owned()))
            }
            b'C' => {
                let n = m.u8()? as usize;
                let b = m.take(n)?.to_vec();
                m.push(Value::Bytes(b))
            }
            b'B' => {
                let n = m.u32()? as usize;
                let b = m.take(n)?.to_vec();
                m.push(Value::Bytes(b))
            }
            b'}' => m.push(Value::Dict(Vec::new())),
            b']' => m.push(Value::List(Vec::new())),
            b')' => m.push(Value::Tuple(Vec::new())),
            b'd' => {
                let items = m.pop_mark()?;
                m.push(Value::Dict(pairs(items)?))
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.push(Value::List(items))
            }
            b't' => {
                let items = m.pop_mark()?;
                m.push(Value::Tuple(items))
            }
            0x85 => {
                let a = m.pop()?;
                m.push(Value::Tuple(vec![a]))
            }
            0x86 => {
                let b = m.pop()?;
                let a = m.pop()?;
                m.push(Value::Tuple(vec![a, b]))
            }
            0x87 => {
                let c = m.pop()?;
                let b = m.pop()?;
                let a = m.pop()?;
                m.push(Value::Tuple(vec![a, b, c]))
            }
            b'q' => {
                let i = m.u8()? as u32;
                m.memo_put(i)?
            }
            b'r' => {
                let i = m.u32()?;
                m.memo_put(i)?
            }
            0x94 => {
                let i = m.memo.len() as u32;
                m.memo_put(i)?
            }
            b'h' => {
                let i = m.u8()? as u32;
                m.memo_get(i)?
            }
            b'j' => {
                let i = m.u32()?;
                m.memo_get(i)?
            }
            b'0' => {
                m.metas.pop();
                m.stack.pop().ok_or("pickle stack underflow")?;
            }
            b'1' => {
                m.pop_mark()?;
            }
            b'2' => {
                let meta = m.metas.last().copied().unwrap_or_default();
                m.copy(meta)?;
                let v = m.top()?.clone();
                m.push_meta(v, meta)
            }
            b'c' => {
                let module = m.line()?;
                let name = m.line()?;
                m.push(Value::Global(resolve_global(&module, &name)?))
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                match (module, name) {
                    (Value::Str(module), Value::Str(name)) => m.push(Value::Global(resolve_global(&module, &name)?)),
                    _ => return Err("STACK_GLOBAL without strings".into()),
                }
            }
            b'Q' => {
                let pid = m.pop()?;
                m.push(persistent_load(pid)?)
            }
            b'R' => {
                let args = m.pop()?;
                let func = match m.pop()? {
                    Value::Global(g) => g,
                    other => return Err(format!("REDUCE on a non-callable {other:?}")),
                };
                m.push(call(func, args)?)
            }
            0x81 => {
                let args = m.pop()?;
                match m.pop()? {
                    Value::Global(g @ Global::OrderedDict) => m.push(call(g, args)?),
                    other => return Err(format!("NEWOBJ on {other:?}")),
                }
            }
            b'b' => {
                // BUILD: only dicts receive state (OrderedDict's `_metadata`), which is ignored.
                let _state = m.pop()?;
                match m.top()? {
                    Value::Dict(_) => {}
                    other => return Err(format!("BUILD on {other:?}")),
                }
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                match m.top()? {
                    Value::Dict(d) => d.push((k, v)),
                    _ => return Err("SETITEM on a non-dict".into()),
                }
                m.absorb();
            }
            b'u' => {
                let items = pairs(m.pop_mark()?)?;
                match m.top()? {
                    Value::Dict(d) => d.extend(items),
                    _ => return Err("SETITEMS on a non-dict".into()),
                }
                m.absorb();
            }
            b'a' => {
                let v = m.pop()?;
                match m.top()? {
                    Value::List(l) => l.push(v),
                    _ => return Err("APPEND on a non-list".into()),
                }
                m.absorb();
            }
            b'e' => {
                let items = m.pop_mark()?;
                match m.top()? {
                    Value::List(l) => l.extend(items),
                    _ => return Err("APPENDS on a non-list".into()),
                }
                m.absorb();
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", m.pos - 1)),
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items in pickle".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_arbitrary_globals() {
        // cos\nsystem\n(S'echo hi'\ntR.  -- the classic exploit
        let evil = b"cos\nsystem\n(U\x07echo hitR.";
        let err = unpickle(evil).unwrap_err();
        assert!(err.contains("os.system"), "{err}");
    }

    #[test]
    fn truncated_pickle_is_an_error() {
        assert!(unpickle(b"\x80\x02}q\x00(X\x03\x00\x00").is_err());
        assert!(unpickle(b"").is_err());
    }

    #[test]
    fn mutated_pickles_never_panic() {
        // A state-dict-like pickle: OrderedDict with one tensor and a BUILD of its metadata.
        let base: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\rsh\x00)Rq\x0eb.";
        let ok = unpickle(base).expect("the sample pickle is valid");
        assert!(matches!(ok, Value::Dict(ref d) if matches!(d[0].1, Value::Tensor(_))));
        for i in 0..base.len() {
            let _ = unpickle(&base[..i]);
            for v in [0u8, 1, 0x7f, 0x80, 0xff, b'(', b'R', b'b', b'u', b'h', b'Q'] {
                let mut m = base.to_vec();
                m[i] = v;
                let _ = unpickle(&m);
            }
        }
    }

    #[test]
    fn integer_buffers_are_recognized_not_refused() {
        // The sample state dict with its tensor over a LongStorage (like `position_ids`).
        let long: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nLongStorage\nq\x05X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08QK\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\rsh\x00)Rq\x0eb.";
        let v = unpickle(long).unwrap();
        assert!(matches!(v, Value::Dict(ref d) if matches!(d[0].1, Value::IntegerTensor("int64"))), "{v:?}");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // A million empty lists, each appended into the one below: nested a million deep.
        let n = 1_000_000;
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        let err = unpickle(&p).unwrap_err();
        assert!(err.contains("nests containers more than"), "{err}");
        // The same through MARK/LIST and TUPLE1.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b"(".as_slice(), n).flatten());
        p.extend(std::iter::repeat_n(b'l', n));
        p.push(b'.');
        assert!(unpickle(&p).unwrap_err().contains("nests"));
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85u8, n));
        p.push(b'.');
        assert!(unpickle(&p).unwrap_err().contains("nests"));
        // Real nesting (a dict of tuples of lists) is far from the limit.
        assert!(unpickle(b"\x80\x02}(X\x01\x00\x00\x00a](K\x01K\x02e\x85u.").is_ok());
    }

    #[test]
    fn memo_bombs_are_refused() {
        // memo[0] = []; then 40 times memo[0] = (memo[0], memo[0]): 2^40 nodes from ~200 bytes.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            p.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        p.push(b'.');
        assert!(p.len() < 300);
        let err = unpickle(&p).unwrap_err();
        assert!(err.contains("memo bomb"), "{err}");
    }

    #[test]
    fn plain_values() {
        // {'a': 1, 'b': [True, None], 'c': -2}
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00b]q\x01(\x88NeX\x01\x00\x00\x00cJ\xfe\xff\xff\xffu.";
        match unpickle(p).unwrap() {
            Value::Dict(d) => {
                assert_eq!(d.len(), 3);
                assert!(matches!(d[2].1, Value::Int(-2)));
            }
            other => panic!("{other:?}"),
        }
    }
}
