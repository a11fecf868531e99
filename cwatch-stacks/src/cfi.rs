/*!
A binary's call frame information as the unwinder needs it: the sections
(`.eh_frame` with its `.eh_frame_hdr` lookup table, or `.debug_frame`),
their link-time addresses, and whether an FDE covers a given address —
framehop falls back to frame pointers silently where none does, so the
unwinder asks here first.
*/
use std::{ops::Range, sync::Arc};

use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};

/// A section's address (as linked) and bytes.
#[derive(Clone, Debug)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Arc<[u8]>,
}

/// The unwind data of one binary and the address ranges it covers.
#[derive(Debug, Default)]
pub struct UnwindData {
    pub text: Option<Range<u64>>,
    pub got: Option<Range<u64>>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub debug_frame: Option<Section>,
    /// FDE ranges when there is no `.eh_frame_hdr` table: sorted, merged.
    pub(crate) ranges: Vec<Range<u64>>,
}

impl UnwindData {
    /// Whether an FDE covers this address (as linked).
    pub fn covers(&self, svma: u64) -> bool {
        if let (Some(hdr), Some(eh)) = (&self.eh_frame_hdr, &self.eh_frame) {
            return self.hdr_covers(hdr, eh, svma);
        }
        let i = self.ranges.partition_point(|r| r.end <= svma);
        self.ranges.get(i).is_some_and(|r| r.start <= svma)
    }

    fn bases(&self) -> BaseAddresses {
        let mut bases = BaseAddresses::default();
        if let Some(hdr) = &self.eh_frame_hdr {
            bases = bases.set_eh_frame_hdr(hdr.svma.start);
        }
        if let Some(eh) = &self.eh_frame {
            bases = bases.set_eh_frame(eh.svma.start);
        }
        if let Some(text) = &self.text {
            bases = bases.set_text(text.start);
        }
        if let Some(got) = &self.got {
            bases = bases.set_got(got.start);
        }
        bases
    }

    fn hdr_covers(&self, hdr: &Section, eh: &Section, svma: u64) -> bool {
        let bases = self.bases();
        let Ok(parsed) = EhFrameHdr::new(&hdr.data, LittleEndian).parse(&bases, 8) else {
            return false;
        };
        let Some(table) = parsed.table() else {
            return false;
        };
        let eh_frame = EhFrame::new(&eh.data, LittleEndian);
        table
            .fde_for_address(&eh_frame, &bases, svma, EhFrame::cie_from_offset)
            .is_ok()
    }

    /// Bytes held.
    pub fn cost(&self) -> usize {
        [&self.eh_frame, &self.eh_frame_hdr, &self.debug_frame]
            .iter()
            .filter_map(|s| s.as_ref())
            .map(|s| s.data.len())
            .sum::<usize>()
            + self.ranges.len() * std::mem::size_of::<Range<u64>>()
    }
}

/// Every FDE's range, sorted and merged where they touch, for sections
/// without a lookup table (`.debug_frame`, or `.eh_frame` without a header).
pub fn fde_ranges(u: &UnwindData) -> Vec<Range<u64>> {
    use gimli::{CieOrFde, DebugFrame};
    let bases = u.bases();
    let mut ranges = Vec::new();
    if let Some(df) = &u.debug_frame {
        let mut section = DebugFrame::new(&df.data, LittleEndian);
        section.set_address_size(8);
        let mut entries = section.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(DebugFrame::cie_from_offset)
            {
                ranges.push(fde.initial_address()..fde.initial_address() + fde.len());
            }
        }
    } else if let (Some(eh), None) = (&u.eh_frame, &u.eh_frame_hdr) {
        let section = EhFrame::new(&eh.data, LittleEndian);
        let mut entries = section.entries(&bases);
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry
                && let Ok(fde) = partial.parse(EhFrame::cie_from_offset)
            {
                ranges.push(fde.initial_address()..fde.initial_address() + fde.len());
            }
        }
    }
    ranges.retain(|r| !r.is_empty());
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged.shrink_to_fit();
    merged
}
