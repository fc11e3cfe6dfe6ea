//! The semantic chunker: cuts a text into pieces worth embedding one by one.
//!
//! Prose is split into sentences (and lines), each sentence is embedded, and a chunk ends where
//! the cosine distance between neighbouring sentences is above the chosen percentile (95th by
//! default) of all neighbour distances — where the topic turns. Every chunk also respects a size
//! cap; a single sentence longer than the cap is cut between words. Code is never cut by
//! meaning: it is split on statement and block boundaries (outside strings and comments), the
//! outermost first, so a chunk never ends in the middle of a token.

use anyhow::ensure;

/// How texts are chunked.
#[derive(Debug, Clone, Copy)]
pub struct ChunkConfig {
    /// A chunk ends where the neighbour distance is above this percentile (0–100).
    pub percentile: f32,
    /// Largest chunk, in characters.
    pub max_chars: usize,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            percentile: 95.0,
            max_chars: 1000,
        }
    }
}

/// Sentences and lines of `text`, trimmed, without empties.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (i, &(pos, c)) in chars.iter().enumerate() {
            let next_is_space = chars.get(i + 1).is_some_and(|(_, n)| n.is_whitespace());
            if matches!(c, '.' | '!' | '?') && next_is_space {
                let end = pos + c.len_utf8();
                out.push(line[start..end].trim().to_string());
                start = end;
            }
        }
        out.push(line[start..].trim().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

fn cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 1.0;
    }
    1.0 - dot / (na * nb)
}

/// The `p`-th percentile of `values`, interpolated between closest ranks (as numpy does, so
/// the seed's thresholds carry over).
pub fn percentile(values: &[f32], p: f32) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f32;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f32)
}

/// Embeds a batch of texts: one vector per text.
pub type EmbedFn<'a> = dyn FnMut(&[String]) -> anyhow::Result<Vec<Vec<f32>>> + 'a;

/// Cuts `text` where its topic turns, within the size cap. `embed` embeds a batch of texts.
pub fn semantic_chunks(
    text: &str,
    cfg: ChunkConfig,
    embed: &mut EmbedFn<'_>,
) -> anyhow::Result<Vec<String>> {
    let units: Vec<String> = sentences(text)
        .into_iter()
        .flat_map(|s| split_words(&s, cfg.max_chars))
        .collect();
    if units.len() <= 1 {
        return Ok(units);
    }
    let vectors = embed(&units)?;
    ensure!(
        vectors.len() == units.len(),
        "the embedder answered {} vectors for {} sentences",
        vectors.len(),
        units.len()
    );
    let distances: Vec<f32> = vectors
        .windows(2)
        .map(|w| cosine_distance(&w[0], &w[1]))
        .collect();
    let threshold = percentile(&distances, cfg.percentile);
    let mut chunks = Vec::new();
    let mut current = units[0].clone();
    for (i, unit) in units.iter().enumerate().skip(1) {
        let turn = distances[i - 1] > threshold;
        if turn || current.len() + 1 + unit.len() > cfg.max_chars {
            chunks.push(std::mem::take(&mut current));
            current = unit.clone();
        } else {
            current.push(' ');
            current.push_str(unit);
        }
    }
    chunks.push(current);
    Ok(chunks)
}

/// Cuts one over-long sentence between words.
fn split_words(s: &str, max: usize) -> Vec<String> {
    if s.len() <= max {
        return vec![s.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    for w in s.split_whitespace() {
        if !cur.is_empty() && cur.len() + 1 + w.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(w);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// If a string, template literal or comment of JavaScript starts at byte `i` of `b`, the
/// index just past it (a line comment ends before its newline).
pub(crate) fn skip_literal(b: &[u8], i: usize) -> Option<usize> {
    match b[i] {
        q @ (b'"' | b'\'' | b'`') => {
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            Some((j + 1).min(b.len()))
        }
        b'/' if b.get(i + 1) == Some(&b'/') => {
            let mut j = i;
            while j < b.len() && b[j] != b'\n' {
                j += 1;
            }
            Some(j)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let mut j = i + 2;
            while j + 1 < b.len() && !(b[j] == b'*' && b[j + 1] == b'/') {
                j += 1;
            }
            Some((j + 2).min(b.len()))
        }
        _ => None,
    }
}

/// Places where JavaScript `code` may be cut: byte offsets just after `;`, `{`, `}` or a
/// newline outside strings, template literals and comments, each with the brace depth there.
fn boundaries(code: &str) -> Vec<(usize, i32)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        if let Some(next) = skip_literal(b, i) {
            i = next;
            continue;
        }
        match b[i] {
            b'{' | b'(' | b'[' => {
                depth += 1;
                if b[i] == b'{' {
                    out.push((i + 1, depth));
                }
            }
            b'}' | b')' | b']' => {
                depth -= 1;
                if b[i] == b'}' {
                    out.push((i + 1, depth));
                }
            }
            b';' | b'\n' => out.push((i + 1, depth)),
            _ => {}
        }
        i += 1;
    }
    out.retain(|&(pos, _)| pos < b.len());
    out
}

/// Splits JavaScript source into chunks of at most `max_chars` on statement and block
/// boundaries, outermost first. A piece with no boundary inside stays whole even if longer.
pub fn code_chunks(code: &str, max_chars: usize) -> Vec<String> {
    let code = code.trim();
    if code.is_empty() {
        return Vec::new();
    }
    split_code(code, max_chars.max(1))
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn split_code(code: &str, max: usize) -> Vec<String> {
    if code.len() <= max {
        return vec![code.to_string()];
    }
    let cuts = boundaries(code);
    let Some(min_depth) = cuts.iter().map(|&(_, d)| d).min() else {
        return vec![code.to_string()];
    };
    let mut pieces = Vec::new();
    let mut start = 0;
    for &(pos, d) in &cuts {
        if d == min_depth {
            pieces.push(&code[start..pos]);
            start = pos;
        }
    }
    pieces.push(&code[start..]);
    // Pack neighbouring pieces up to the cap; split what is still too long one level deeper.
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for piece in pieces {
        if !cur.is_empty() && cur.len() + piece.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        if piece.len() > max {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if piece.len() == code.len() {
                out.push(piece.to_string());
            } else {
                out.extend(split_code(piece, max));
            }
        } else {
            cur.push_str(piece);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_stops_and_lines() {
        assert_eq!(
            sentences("One thing. Two things!\nThree? e.g.x stays\n\n"),
            vec!["One thing.", "Two things!", "Three?", "e.g.x stays"]
        );
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v: Vec<f32> = (1..=20).map(|x| x as f32).collect();
        assert!((percentile(&v, 95.0) - 19.05).abs() < 1e-4);
        assert_eq!(percentile(&v, 100.0), 20.0);
        assert_eq!(percentile(&[0.5], 95.0), 0.5);
    }

    #[test]
    fn prose_breaks_where_the_topic_turns() {
        // Two topics: sentences 0-9 point one way, 10-19 another; the embedder is a lookup.
        let text: String = (0..20)
            .map(|i| format!("S{i} {}.", if i < 10 { "cats" } else { "taxes" }))
            .collect::<Vec<_>>()
            .join(" ");
        let mut embed = |units: &[String]| -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(units
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let wobble = (i % 3) as f32 * 0.05;
                    if u.contains("cats") {
                        vec![1.0, wobble, 0.0]
                    } else {
                        vec![0.0, wobble, 1.0]
                    }
                })
                .collect())
        };
        let cfg = ChunkConfig {
            percentile: 95.0,
            max_chars: 10_000,
        };
        let chunks = semantic_chunks(&text, cfg, &mut embed).unwrap();
        assert_eq!(chunks.len(), 2, "{chunks:?}");
        assert!(chunks[0].starts_with("S0 ") && chunks[0].ends_with("S9 cats."));
        assert!(chunks[1].starts_with("S10 "));
        let capped = semantic_chunks(
            &text,
            ChunkConfig {
                max_chars: 40,
                ..cfg
            },
            &mut embed,
        )
        .unwrap();
        assert!(capped.iter().all(|c| c.len() <= 40), "{capped:?}");
        assert_eq!(capped.join(" "), text);
    }

    #[test]
    fn code_is_cut_on_statement_boundaries_only() {
        let src = r#"function area(self, w, h) {
  const note = "a; b { c }";  // not a boundary; nor { this
  let total = 0;
  for (let i = 0; i < h; i++) { total += w; }
  /* block; comment } */
  return total;
}"#;
        assert_eq!(code_chunks(src, 10_000), vec![src.to_string()]);
        let chunks = code_chunks(src, 60);
        assert!(chunks.len() > 1, "{chunks:?}");
        // Every cut is at a boundary: the string and the comments stay whole.
        assert!(
            chunks.iter().any(|c| c.contains(r#""a; b { c }""#)),
            "{chunks:?}"
        );
        assert!(
            chunks.iter().any(|c| c.contains("/* block; comment } */")),
            "{chunks:?}"
        );
        assert!(
            chunks
                .iter()
                .any(|c| c.contains("for (let i = 0; i < h; i++)")),
            "{chunks:?}"
        );
        let joined: String = chunks.concat().split_whitespace().collect();
        let original: String = src.split_whitespace().collect();
        assert_eq!(joined, original, "nothing lost or reordered");
    }

    #[test]
    fn two_functions_split_between_them() {
        let src = "function a(self) { return 1; }\nfunction b(self) { return 2; }";
        assert_eq!(
            code_chunks(src, 40),
            vec![
                "function a(self) { return 1; }",
                "function b(self) { return 2; }"
            ]
        );
    }
}
