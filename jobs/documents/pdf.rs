//! A streaming PDF writer for invoice documents, on `pdf-writer` (objects), `subsetter` (font subsets) and
//! `ttf-parser` (glyph ids and advances).
//!
//! Every page is written to the file as soon as it is finished (content stream deflated, one object per
//! write, byte offsets kept for the cross-reference table), so a document of thousands of pages needs the
//! memory of one page plus the fonts' glyph maps. The page count is known before the first page (the layout
//! runs once without drawing, see `layout.rs`), so page objects have fixed numbers and a table of contents can
//! link to pages not written yet. Fonts are subset at the end to the glyphs used, numbered in order of first
//! use (the numbering content streams were written with). No clock, no random ids: the file id is a hash of the
//! bytes, so the same document gives the same bytes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use pdf_writer::types::{AnnotationType, CidFontType, FontFlags, SystemInfo, UnicodeCmap};
use pdf_writer::{Chunk, Content, Filter, Name, Rect, Ref, Str, TextStr};
use sha2::{Digest, Sha256};
use subsetter::GlyphRemapper;

/// A4 portrait, in points.
pub const PAGE_W: f32 = 595.28;
pub const PAGE_H: f32 = 841.89;

static REGULAR: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansCondensed.ttf");
static BOLD: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansCondensed-Bold.ttf");

/// Glyph ids and advances of one font, by character (cached).
pub struct Face {
    face: ttf_parser::Face<'static>,
    data: &'static [u8],
    name: &'static str,
    upem: f32,
    cache: HashMap<char, (u16, f32)>,
}

impl Face {
    fn new(data: &'static [u8], name: &'static str) -> Result<Self> {
        let face = ttf_parser::Face::parse(data, 0).context("reading the embedded invoice font")?;
        let upem = f32::from(face.units_per_em());
        Ok(Self { face, data, name, upem, cache: HashMap::new() })
    }

    /// The glyph of `c` (the glyph of `?` when the font has none) and its advance in font units.
    fn glyph(&mut self, c: char) -> (u16, f32) {
        if let Some(g) = self.cache.get(&c) {
            return *g;
        }
        let gid = self.face.glyph_index(c).or_else(|| self.face.glyph_index('?')).map(|g| g.0).unwrap_or(0);
        let adv = self.face.glyph_hor_advance(ttf_parser::GlyphId(gid)).map(f32::from).unwrap_or(0.0);
        self.cache.insert(c, (gid, adv));
        (gid, adv)
    }

    /// The width of `s` at `size` points.
    pub fn width(&mut self, s: &str, size: f32) -> f32 {
        s.chars().map(|c| self.glyph(c).1).sum::<f32>() * size / self.upem
    }
}

/// The two faces of the documents (regular and bold), for measuring.
pub struct Metrics {
    pub regular: Face,
    pub bold: Face,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        Ok(Self { regular: Face::new(REGULAR, "DejaVuSansCondensed")?, bold: Face::new(BOLD, "DejaVuSansCondensed-Bold")? })
    }
    pub fn face(&mut self, bold: bool) -> &mut Face {
        if bold { &mut self.bold } else { &mut self.regular }
    }
    pub fn width(&mut self, s: &str, size: f32, bold: bool) -> f32 {
        self.face(bold).width(s, size)
    }
    /// `s` cut to fit `width` (with `…` when cut).
    pub fn fit(&mut self, s: &str, width: f32, size: f32, bold: bool) -> String {
        if self.width(s, size, bold) <= width {
            return s.to_string();
        }
        let ell = self.width("…", size, bold);
        let mut out = String::new();
        let mut w = 0.0;
        for c in s.chars() {
            let cw = self.width(c.encode_utf8(&mut [0; 4]), size, bold);
            if w + cw + ell > width {
                break;
            }
            w += cw;
            out.push(c);
        }
        out.push('…');
        out
    }
    /// `s` broken into lines of at most `width` (at spaces; a word longer than a line between characters).
    pub fn wrap(&mut self, s: &str, width: f32, size: f32, bold: bool) -> Vec<String> {
        let mut lines = Vec::new();
        let mut cur = String::new();
        for word in s.split(' ') {
            let candidate = if cur.is_empty() { word.to_string() } else { format!("{cur} {word}") };
            if self.width(&candidate, size, bold) <= width || cur.is_empty() {
                cur = candidate;
            } else {
                lines.push(std::mem::take(&mut cur));
                cur = word.to_string();
            }
        }
        lines.push(cur);
        // A word longer than a line (an e-mail address, a resource id) is broken between characters.
        let mut out = Vec::with_capacity(lines.len());
        for l in lines {
            if self.width(&l, size, bold) <= width {
                out.push(l);
                continue;
            }
            let mut part = String::new();
            for c in l.chars() {
                part.push(c);
                if self.width(&part, size, bold) > width {
                    part.pop();
                    out.push(std::mem::take(&mut part));
                    part.push(c);
                }
            }
            out.push(part);
        }
        out
    }
}

/// Glyphs of one embedded font, renumbered in order of first use (the CIDs of the content streams).
struct Embedded {
    remap: GlyphRemapper,
    /// new glyph id → (character, advance in font units)
    used: BTreeMap<u16, (char, f32)>,
}

/// Fixed object numbers; pages follow from [`FIRST_PAGE`], two objects each (page, content).
const CATALOG: i32 = 1;
const PAGE_TREE: i32 = 2;
const INFO: i32 = 3;
const FONT_BASE: [i32; 2] = [4, 9]; // Type0, CIDFont, descriptor, font file, ToUnicode: 5 each
const FIRST_PAGE: i32 = 14;

/// A link on the current page to the top of another page.
struct Link {
    rect: Rect,
    page: usize,
}

/// The PDF being written: pages stream to `out`.
pub struct PdfWriter {
    out: BufWriter<File>,
    hash: Sha256,
    pos: u64,
    offsets: BTreeMap<i32, u64>,
    next_extra: i32,
    pages: usize,
    page_count: usize,
    pub metrics: Metrics,
    fonts: [Embedded; 2],
    content: Content,
    links: Vec<Link>,
    outline: Vec<(String, usize, f32)>,
    open: bool,
}

impl PdfWriter {
    /// Starts a document of exactly `page_count` pages at `path`.
    pub fn create(path: &Path, page_count: usize) -> Result<Self> {
        let f = File::create(path).with_context(|| format!("creating `{}`", path.display()))?;
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 16, f),
            hash: Sha256::new(),
            pos: 0,
            offsets: BTreeMap::new(),
            next_extra: FIRST_PAGE + 2 * page_count as i32,
            pages: 0,
            page_count,
            metrics: Metrics::new()?,
            fonts: [Embedded { remap: GlyphRemapper::new(), used: BTreeMap::new() }, Embedded { remap: GlyphRemapper::new(), used: BTreeMap::new() }],
            content: Content::new(),
            links: Vec::new(),
            outline: Vec::new(),
            open: false,
        };
        w.raw(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.hash.update(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes a chunk holding exactly one object, remembering its offset.
    fn object(&mut self, chunk: Chunk) -> Result<()> {
        let refs: Vec<Ref> = chunk.refs().collect();
        if refs.len() != 1 {
            bail!("internal: a PDF chunk must hold one object, it holds {}", refs.len());
        }
        self.offsets.insert(refs[0].get(), self.pos);
        self.raw(chunk.as_bytes())
    }

    fn page_ref(i: usize) -> Ref {
        Ref::new(FIRST_PAGE + 2 * i as i32)
    }

    /// Starts the next page (finishing the current one).
    pub fn new_page(&mut self) -> Result<()> {
        if self.open {
            self.finish_page()?;
        }
        self.open = true;
        Ok(())
    }

    fn finish_page(&mut self) -> Result<()> {
        let i = self.pages;
        if i >= self.page_count {
            bail!("internal: the invoice layout drew more pages than it counted ({})", self.page_count);
        }
        let content = std::mem::replace(&mut self.content, Content::new()).finish();
        let compressed = deflate(&content);
        let mut annots = Vec::new();
        let links = std::mem::take(&mut self.links);
        let mut link_chunks = Vec::new();
        for l in links {
            let id = Ref::new(self.next_extra);
            self.next_extra += 1;
            annots.push(id);
            let mut c = Chunk::new();
            {
                let mut a = c.annotation(id);
                a.subtype(AnnotationType::Link).rect(l.rect).border(0.0, 0.0, 0.0, None);
                a.insert(Name(b"Dest")).array().item(Self::page_ref(l.page)).item(Name(b"Fit"));
            }
            link_chunks.push(c);
        }
        let mut c = Chunk::new();
        {
            let mut page = c.page(Self::page_ref(i));
            page.media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H))
                .parent(Ref::new(PAGE_TREE))
                .contents(Ref::new(FIRST_PAGE + 2 * i as i32 + 1));
            if !annots.is_empty() {
                page.annotations(annots.iter().copied());
            }
            let mut res = page.resources();
            let mut fonts = res.fonts();
            fonts.pair(Name(b"F1"), Ref::new(FONT_BASE[0]));
            fonts.pair(Name(b"F2"), Ref::new(FONT_BASE[1]));
        }
        self.object(c)?;
        let mut c = Chunk::new();
        c.stream(Ref::new(FIRST_PAGE + 2 * i as i32 + 1), &compressed).filter(Filter::FlateDecode);
        self.object(c)?;
        for c in link_chunks {
            self.object(c)?;
        }
        self.pages += 1;
        Ok(())
    }

    /// Text at (x, baseline y) from the top-left corner.
    pub fn text(&mut self, x: f32, y: f32, size: f32, bold: bool, s: &str) {
        if s.is_empty() {
            return;
        }
        let k = usize::from(bold);
        let face = self.metrics.face(bold);
        let mut bytes = Vec::with_capacity(s.len() * 2);
        for c in s.chars() {
            let (gid, adv) = face.glyph(c);
            let e = &mut self.fonts[k];
            let new = e.remap.remap(gid);
            e.used.entry(new).or_insert((c, adv));
            bytes.extend_from_slice(&new.to_be_bytes());
        }
        let name = if bold { Name(b"F2") } else { Name(b"F1") };
        self.content.begin_text();
        self.content.set_font(name, size);
        self.content.set_text_matrix([1.0, 0.0, 0.0, 1.0, x, PAGE_H - y]);
        self.content.show(Str(&bytes));
        self.content.end_text();
    }

    /// A horizontal rule.
    pub fn rule(&mut self, x1: f32, x2: f32, y: f32, width: f32) {
        self.content.set_line_width(width);
        self.content.set_stroke_rgb(0.55, 0.55, 0.55);
        self.content.move_to(x1, PAGE_H - y);
        self.content.line_to(x2, PAGE_H - y);
        self.content.stroke();
    }

    /// A light band behind a header row (x, top y, width, height).
    pub fn shade(&mut self, x: f32, y: f32, w: f32, h: f32) {
        self.content.save_state();
        self.content.set_fill_rgb(0.92, 0.93, 0.95);
        self.content.rect(x, PAGE_H - y - h, w, h);
        self.content.fill_nonzero();
        self.content.restore_state();
    }

    /// A link from a box on the current page (x, top y, width, height) to page `page` (0-based).
    pub fn link(&mut self, x: f32, y: f32, w: f32, h: f32, page: usize) {
        self.links.push(Link { rect: Rect::new(x, PAGE_H - y - h, x + w, PAGE_H - y), page });
    }

    /// A bookmark to the current page.
    pub fn bookmark(&mut self, title: &str, y: f32) {
        self.outline.push((title.to_string(), self.pages, y));
    }

    /// Writes the fonts, page tree, outline, catalog, cross-reference table and trailer.
    pub fn finish(mut self, title: &str, author: &str) -> Result<()> {
        if self.open {
            self.finish_page()?;
        }
        if self.pages != self.page_count {
            bail!("internal: the invoice layout counted {} pages but drew {}", self.page_count, self.pages);
        }
        for k in 0..2 {
            self.write_font(k)?;
        }
        // Outline: a flat list of bookmarks.
        let outline_root = if self.outline.is_empty() {
            None
        } else {
            let root = Ref::new(self.next_extra);
            let first = self.next_extra + 1;
            let n = self.outline.len() as i32;
            self.next_extra += 1 + n;
            let items = std::mem::take(&mut self.outline);
            let mut c = Chunk::new();
            c.outline(root).first(Ref::new(first)).last(Ref::new(first + n - 1)).count(n);
            self.object(c)?;
            for (j, (t, page, _y)) in items.iter().enumerate() {
                let id = first + j as i32;
                let mut c = Chunk::new();
                {
                    let mut it = c.outline_item(Ref::new(id));
                    it.title(TextStr(t)).parent(root);
                    if j > 0 {
                        it.prev(Ref::new(id - 1));
                    }
                    if j + 1 < items.len() {
                        it.next(Ref::new(id + 1));
                    }
                    it.insert(Name(b"Dest")).array().item(Self::page_ref(*page)).item(Name(b"Fit"));
                }
                self.object(c)?;
            }
            Some(root)
        };
        let mut c = Chunk::new();
        c.pages(Ref::new(PAGE_TREE)).kids((0..self.page_count).map(Self::page_ref)).count(self.page_count as i32);
        self.object(c)?;
        let mut c = Chunk::new();
        {
            let mut cat = c.indirect(Ref::new(CATALOG)).start::<pdf_writer::writers::Catalog>();
            cat.pages(Ref::new(PAGE_TREE));
            if let Some(r) = outline_root {
                cat.outlines(r);
                cat.page_mode(pdf_writer::types::PageMode::UseOutlines);
            }
        }
        self.object(c)?;
        let mut c = Chunk::new();
        c.indirect(Ref::new(INFO)).start::<pdf_writer::writers::DocumentInfo>().title(TextStr(title)).author(TextStr(author)).creator(TextStr("cspbill")).producer(TextStr("cspbill (pdf-writer)"));
        self.object(c)?;

        // Cross-reference table: every number from 1 to the last is an object written above.
        let size = self.next_extra;
        let xref = self.pos;
        let mut table = format!("xref\n0 {size}\n0000000000 65535 f\r\n");
        for id in 1..size {
            let Some(off) = self.offsets.get(&id) else {
                bail!("internal: PDF object {id} was never written");
            };
            table.push_str(&format!("{off:010} 00000 n\r\n"));
        }
        self.raw(table.as_bytes())?;
        let id = hex::encode(&self.hash.clone().finalize()[..16]);
        let trailer = format!(
            "trailer\n<< /Size {size} /Root {CATALOG} 0 R /Info {INFO} 0 R /ID [<{id}> <{id}>] >>\nstartxref\n{xref}\n%%EOF\n"
        );
        self.raw(trailer.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// The objects of font `k` (0 regular, 1 bold): Type0 → CIDFontType2 → descriptor → subset file, ToUnicode.
    fn write_font(&mut self, k: usize) -> Result<()> {
        let base = FONT_BASE[k];
        let (type0, cid, desc, file, cmap) = (Ref::new(base), Ref::new(base + 1), Ref::new(base + 2), Ref::new(base + 3), Ref::new(base + 4));
        let face = if k == 0 { &self.metrics.regular } else { &self.metrics.bold };
        let (data, upem, fname) = (face.data, face.upem, face.name);
        let f = &face.face;
        let scale = 1000.0 / upem;
        let bbox = f.global_bounding_box();
        let (ascent, descent) = (f32::from(f.ascender()) * scale, f32::from(f.descender()) * scale);
        let cap = f.capital_height().map(|h| f32::from(h) * scale).unwrap_or(700.0);
        let e = &self.fonts[k];
        let subset = subsetter::subset(data, 0, &e.remap).map_err(|err| anyhow::anyhow!("subsetting the invoice font: {err:?}"))?;
        // A subset's name starts with a tag of six capitals, here derived from the glyphs it holds.
        let digest = Sha256::digest(e.used.keys().flat_map(|g| g.to_be_bytes()).chain(e.used.values().flat_map(|(c, _)| (*c as u32).to_be_bytes())).collect::<Vec<u8>>());
        let tag: String = digest.iter().take(6).map(|b| (b'A' + b % 26) as char).collect();
        let base_font = format!("{tag}+{fname}");
        let mut widths: Vec<(u16, f32)> = e.used.iter().map(|(g, (_, adv))| (*g, adv * scale)).collect();
        widths.sort_by_key(|(g, _)| *g);
        let mut uni = UnicodeCmap::new(Name(b"Custom"), SystemInfo { registry: Str(b"Adobe"), ordering: Str(b"Identity"), supplement: 0 });
        for (g, (c, _)) in &e.used {
            uni.pair(*g, *c);
        }
        let uni = uni.finish();

        let mut c = Chunk::new();
        c.type0_font(type0).base_font(Name(base_font.as_bytes())).encoding_predefined(Name(b"Identity-H")).descendant_font(cid).to_unicode(cmap);
        self.object(c)?;
        let mut c = Chunk::new();
        {
            let mut cf = c.cid_font(cid);
            cf.subtype(CidFontType::Type2)
                .base_font(Name(base_font.as_bytes()))
                .system_info(SystemInfo { registry: Str(b"Adobe"), ordering: Str(b"Identity"), supplement: 0 })
                .font_descriptor(desc)
                .default_width(0.0)
                .cid_to_gid_map_predefined(Name(b"Identity"));
            let mut w = cf.widths();
            for (g, width) in &widths {
                w.consecutive(*g, [*width]);
            }
        }
        self.object(c)?;
        let mut c = Chunk::new();
        c.font_descriptor(desc)
            .name(Name(base_font.as_bytes()))
            .flags(FontFlags::NON_SYMBOLIC)
            .bbox(Rect::new(f32::from(bbox.x_min) * scale, f32::from(bbox.y_min) * scale, f32::from(bbox.x_max) * scale, f32::from(bbox.y_max) * scale))
            .italic_angle(0.0)
            .ascent(ascent)
            .descent(descent)
            .cap_height(cap)
            .stem_v(if k == 1 { 120.0 } else { 80.0 })
            .font_file2(file);
        self.object(c)?;
        let packed = deflate(&subset);
        let mut c = Chunk::new();
        c.stream(file, &packed).filter(Filter::FlateDecode).pair(Name(b"Length1"), subset.len() as i32);
        self.object(c)?;
        let mut c = Chunk::new();
        c.cmap(cmap, &uni);
        self.object(c)?;
        Ok(())
    }
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}
