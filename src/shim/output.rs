//! The application's output buffers in one call: their sizes as given, what the provider
//! reports having written (never read or wiped past what the application gave), the output's
//! fate in the record (`out`), and the regions to wipe if the record that must come first
//! cannot be written.

use super::args;
use super::call::{Call, MAX_LOGGED_HANDLES};
use crate::format::record::OutputDisposition;
use crate::shim::context::Op;
use cryptoki_sys as ck;

impl Call<'_> {
    /// After a single-part call or a Final that returns output in `buf` / `*len`.
    /// The operation stays active after a length query (NULL buffer, CKR_OK) and after
    /// CKR_BUFFER_TOO_SMALL (PKCS#11 2.40 §5.2); anything else ends it.
    ///
    /// # Safety
    /// `len` must be NULL or readable; if the provider returned output, `buf` holds `*len`
    /// writable bytes.
    pub(crate) unsafe fn output_final(
        &mut self,
        op: Option<Op>,
        buf: *mut u8,
        len: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        // SAFETY: per the caller.
        let still_active = unsafe { self.output(buf, len, rv) };
        if let Some(op) = op {
            if !still_active {
                self.end_op(op);
            }
        }
    }

    /// Records an output buffer's fate; returns true if the operation stays active
    /// (length query or buffer too small).
    ///
    /// # Safety
    /// As `output_final`.
    pub(crate) unsafe fn output(
        &mut self,
        buf: *mut u8,
        len: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) -> bool {
        // SAFETY: per the caller.
        let out_len = unsafe { args::read(len) }.map(|l| l as u64);
        // On other errors *len is whatever the caller passed in: not an output length.
        if matches!(rv, ck::CKR_OK | ck::CKR_BUFFER_TOO_SMALL) {
            self.detail.out_len = out_len;
        }
        match rv {
            ck::CKR_OK if buf.is_null() => {
                self.detail.out = Some(OutputDisposition::LengthQuery);
                true
            }
            ck::CKR_BUFFER_TOO_SMALL => {
                self.detail.out = Some(OutputDisposition::BufferTooSmall);
                true
            }
            ck::CKR_OK => {
                self.detail.out = Some(OutputDisposition::Returned);
                self.hands_out = true;
                if let Some(n) = out_len {
                    let n = self.within_capacity(buf, n as usize);
                    self.outputs.push((buf, n));
                }
                false
            }
            _ => false,
        }
    }

    /// Before the call: the application's output buffer `buf` and its size `*len`.
    ///
    /// # Safety
    /// `len` must be NULL or readable.
    pub(crate) unsafe fn output_buffer(&mut self, buf: *mut u8, len: *const ck::CK_ULONG) {
        // SAFETY: per the caller.
        if let (false, Some(cap)) = (buf.is_null(), unsafe { args::read(len) }) {
            self.output_capacity = Some((buf, cap as usize));
        }
    }

    /// Before the call: the application's output buffer `buf` of `bytes` (C_FindObjects'
    /// handle array, C_GenerateRandom's buffer).
    pub(crate) fn given_buffer(&mut self, buf: *mut u8, bytes: usize) {
        if !buf.is_null() {
            self.output_capacity = Some((buf, bytes));
        }
    }

    /// After a failure inside p11audit once the provider had answered: zeroes every buffer the
    /// application gave for output, whole (what the provider wrote there is not known).
    pub(super) fn wipe_given_buffers(&self) {
        let attributes = self
            .attribute_buffers
            .iter()
            .filter(|&&(_, cap)| cap != ck::CK_UNAVAILABLE_INFORMATION)
            .map(|&(buf, cap)| (buf, cap as usize));
        for (buf, len) in self.output_capacity.into_iter().chain(attributes) {
            if !buf.is_null() {
                // SAFETY: the application gave `buf` for output with room for `len` bytes
                // (its own size, recorded before the call).
                unsafe { std::ptr::write_bytes(buf, 0, len) };
            }
        }
    }

    /// `len` bytes at `buf`, or fewer if the application said its buffer there is smaller.
    pub(super) fn within_capacity(&self, buf: *const u8, len: usize) -> usize {
        match self.output_capacity {
            Some((b, cap)) if b.cast_const() == buf => len.min(cap),
            _ => len,
        }
    }

    /// The size the application gave for attribute `i`'s buffer (C_GetAttributeValue).
    pub(super) fn attribute_capacity(&self, i: usize) -> Option<ck::CK_ULONG> {
        self.attribute_buffers.get(i).map(|&(_, cap)| cap)
    }

    /// The result is the return value itself (C_Verify's verdict): its record comes first.
    pub(crate) fn verdict(&mut self) {
        self.hands_out = true;
    }

    /// Output the caller must not see if the record cannot be written.
    pub(crate) fn output_region(&mut self, buf: *mut u8, len: usize) {
        self.hands_out = true;
        self.detail.out = Some(OutputDisposition::Returned);
        if !buf.is_null() && len > 0 {
            self.outputs.push((buf, len));
        }
    }

    /// After C_GetAttributeValue: which attributes were read, their lengths, and allowlisted
    /// values. Every returned value is output the caller must not see without a record.
    ///
    /// # Safety
    /// `template` must be NULL or point to `count` attributes whose non-NULL `pValue` hold as
    /// many bytes as their `ulValueLen` said before the call (`attribute_buffers`).
    pub(crate) unsafe fn attributes_read(
        &mut self,
        template: *const ck::CK_ATTRIBUTE,
        count: ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        // Per PKCS#11 2.40 §5.7 these return values still fill every attribute they can.
        let filled = matches!(
            rv,
            ck::CKR_OK
                | ck::CKR_ATTRIBUTE_SENSITIVE
                | ck::CKR_ATTRIBUTE_TYPE_INVALID
                | ck::CKR_BUFFER_TOO_SMALL
        );
        // SAFETY: per the caller.
        let summary =
            unsafe { args::template(template, count, filled, |i| self.attribute_capacity(i)) };
        self.detail.template = Some(summary);
        if !filled || template.is_null() {
            return;
        }
        self.hands_out = true;
        for i in 0..count as usize {
            // SAFETY: i < count.
            let Some(a) = (unsafe { args::read(template.add(i)) }) else {
                break;
            };
            if !a.pValue.is_null() && a.ulValueLen != ck::CK_UNAVAILABLE_INFORMATION {
                let len = self
                    .attribute_capacity(i)
                    .map_or(a.ulValueLen, |cap| a.ulValueLen.min(cap));
                self.outputs.push((a.pValue as *mut u8, len as usize));
            }
        }
    }

    /// After C_FindObjects: how many handles were returned (into an array of `max`).
    ///
    /// # Safety
    /// `found` must be NULL or readable; `objects` holds `max` handles.
    pub(crate) unsafe fn objects_found(
        &mut self,
        objects: *mut ck::CK_OBJECT_HANDLE,
        max: ck::CK_ULONG,
        found: *const ck::CK_ULONG,
        rv: ck::CK_RV,
    ) {
        if rv != ck::CKR_OK {
            return;
        }
        // SAFETY: per the caller.
        let reported = unsafe { args::read(found) }.unwrap_or(0);
        self.detail.count = Some(reported as u64);
        // A provider cannot have returned more than the array holds (PKCS#11 §5.10); one that
        // says so must not make p11audit read or wipe past it.
        let n = reported.min(max);
        if !objects.is_null() {
            for i in 0..(n as usize).min(MAX_LOGGED_HANDLES) {
                // SAFETY: i < n <= max, the array's length.
                self.detail
                    .found
                    .push(unsafe { objects.add(i).read_unaligned() } as u64);
            }
        }
        self.output_region(
            objects as *mut u8,
            (n as usize).saturating_mul(std::mem::size_of::<ck::CK_OBJECT_HANDLE>()),
        );
    }

    /// Zeroes the output the provider handed back, when its record cannot be written.
    pub(super) fn wipe_outputs(&self) {
        for &(buf, len) in &self.outputs {
            // SAFETY: `buf` is the application's buffer and `len` is at most the size it gave
            // for it before the call (`within_capacity`, the attribute and `max` caps), and at
            // most what the provider reports having written.
            unsafe { std::ptr::write_bytes(buf, 0, len) };
        }
    }
}
