//! `.npy` outputs: a fixed 128-byte header (room for any row count, rewritten at the end), the
//! float32 rows as they come, and the names one a line in `<file>.paths.txt`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{names, output_err, Row, Temp};
use crate::error::{Error, Result};

/// Header bytes: magic, version 1.0, length, the dict padded with spaces, a newline.
const HEADER: usize = 128;

/// The names file beside an `.npy` output.
pub fn names_path(path: &Path) -> PathBuf {
    path.with_extension("paths.txt")
}

fn header(rows: u64, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&((HEADER - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(HEADER - 1, b' ');
    h.push(b'\n');
    h
}

pub(super) struct NpyWriter {
    data: BufWriter<File>,
    data_tmp: Temp,
    names: BufWriter<File>,
    names_tmp: Temp,
    rows: u64,
}

impl NpyWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let (data_tmp, file) = Temp::create(path, "data")?;
        let (names_tmp, names) = Temp::create(&names_path(path), "names")?;
        let mut data = BufWriter::new(file);
        data.write_all(&header(0, 0)).map_err(|e| Error::io(path, e))?;
        Ok(NpyWriter { data, data_tmp, names: BufWriter::new(names), names_tmp, rows: 0 })
    }

    pub fn push(&mut self, line: &str, embedding: &[f32]) -> Result<()> {
        let p = self.data_tmp.path.clone();
        for v in embedding {
            self.data.write_all(&v.to_le_bytes()).map_err(|e| Error::io(&p, e))?;
        }
        self.names
            .write_all(line.as_bytes())
            .and_then(|()| self.names.write_all(b"\n"))
            .map_err(|e| Error::io(&p, e))?;
        self.rows += 1;
        Ok(())
    }

    pub fn finish(self, path: &Path, dim: usize) -> Result<()> {
        let io = |e: std::io::Error| Error::io(path, e);
        let mut data = self.data.into_inner().map_err(|e| io(e.into_error()))?;
        data.seek(SeekFrom::Start(0)).map_err(io)?;
        data.write_all(&header(self.rows, dim)).map_err(io)?;
        let names = self.names.into_inner().map_err(|e| io(e.into_error()))?;
        self.names_tmp.commit(&names, &names_path(path))?;
        self.data_tmp.commit(&data, path)
    }
}

/// The shape in an `.npy` header, checked to be float32 little-endian in C order.
fn parse_header(path: &Path, file: &mut File) -> Result<(u64, usize, u64)> {
    let bad = |why: &str| output_err(path, format!("not a float32 .npy matrix: {why}"));
    let mut pre = [0u8; 10];
    file.read_exact(&mut pre).map_err(|_| bad("too short"))?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (len, start) = match pre[6] {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10u64),
        2 | 3 => {
            let mut more = [0u8; 2];
            file.read_exact(&mut more).map_err(|_| bad("too short"))?;
            (u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize, 12)
        }
        v => return Err(bad(&format!("version {v}"))),
    };
    if len > 65_536 {
        return Err(bad("header too long"));
    }
    let mut dict = vec![0u8; len];
    file.read_exact(&mut dict).map_err(|_| bad("header cut short"))?;
    let dict = String::from_utf8_lossy(&dict);
    if !dict.contains("'descr': '<f4'") || !dict.contains("'fortran_order': False") {
        return Err(bad("only '<f4' in C order is read"));
    }
    let shape = dict.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or_else(|| bad("no shape"))?;
    let dims: Vec<u64> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let [rows, dim] = dims[..] else { return Err(bad("not two-dimensional")) };
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let need = rows.checked_mul(dim).and_then(|n| n.checked_mul(4)).and_then(|n| n.checked_add(start + len as u64));
    if need != Some(size) {
        return Err(bad(&format!("shape ({rows}, {dim}) does not match the file's {size} bytes")));
    }
    Ok((rows, dim as usize, start + len as u64))
}

/// The rows of an `.npy` output with the raw lines of its names file.
pub fn read_lines(path: &Path) -> Result<impl Iterator<Item = Result<(String, Vec<f32>)>>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let (rows, dim, offset) = parse_header(path, &mut file)?;
    let np = names_path(path);
    let names = File::open(&np).map_err(|e| Error::io(&np, e))?;
    let lines: Vec<String> =
        BufReader::new(names).lines().collect::<std::io::Result<_>>().map_err(|e| Error::io(&np, e))?;
    if lines.len() as u64 != rows {
        return Err(output_err(path, format!("holds {rows} rows but {} has {} names", np.display(), lines.len())));
    }
    file.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(path, e))?;
    let mut data = BufReader::new(file);
    let p = path.to_path_buf();
    Ok(lines.into_iter().map(move |line| {
        let mut bytes = vec![0u8; dim * 4];
        data.read_exact(&mut bytes).map_err(|e| Error::io(&p, e))?;
        Ok((line, bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }))
}

/// The rows of an `.npy` output.
pub fn read(path: &Path) -> Result<impl Iterator<Item = Result<Row>>> {
    Ok(read_lines(path)?.map(|r| {
        r.map(|(line, embedding)| Row {
            key: names::display_bytes(&names::unescape_line(&line)),
            size: None,
            embedding,
        })
    }))
}
