/*!
Is this a return address? An x86-64 return address follows a call
instruction: `E8 rel32`, or `FF /2` with any ModRM/SIB/displacement form
(`call *%rax`, `call *0x10(%rbx)`, `call *disp(%rip)`, with or without a REX
prefix). A value read off the stack that is not preceded by one is data, and
the unwinder stops there instead of naming a function it never was in.
*/

/// The longest `FF /2` call: FF, ModRM, SIB, disp32.
const LONGEST: usize = 7;

/// How many bytes before a return address [`follows_call`] looks at.
pub const WINDOW: usize = LONGEST;

/// `before` holds the bytes that end right at the return address (at most
/// [`WINDOW`]; fewer near the start of a file).
pub fn follows_call(before: &[u8]) -> bool {
    let n = before.len();
    if n >= 5 && before[n - 5] == 0xE8 {
        return true;
    }
    (2..=LONGEST.min(n))
        .any(|k| before[n - k] == 0xFF && indirect_call_len(&before[n - k + 1..]) == Some(k))
}

/// Length of `FF /2` starting at its ModRM byte (`rest[0]`), counting the
/// FF, if the ModRM says "call" (reg field 2).
fn indirect_call_len(rest: &[u8]) -> Option<usize> {
    let modrm = *rest.first()?;
    let (md, reg, rm) = (modrm >> 6, (modrm >> 3) & 7, modrm & 7);
    if reg != 2 {
        return None;
    }
    let mut len = 2;
    if md != 3 && rm == 4 {
        let sib = *rest.get(1)?;
        len += 1;
        if md == 0 && sib & 7 == 5 {
            len += 4;
        }
    }
    len += match (md, rm) {
        (0, 5) => 4,
        (1, _) => 1,
        (2, _) => 4,
        _ => 0,
    };
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::follows_call;

    fn ends_with(code: &[u8]) -> Vec<u8> {
        // Unrelated bytes before, so only the tail can match.
        let mut v = vec![0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90];
        v.extend_from_slice(code);
        v[v.len() - super::WINDOW..].to_vec()
    }

    #[test]
    fn direct_and_indirect_calls() {
        for code in [
            &[0xE8, 1, 2, 3, 4][..],         // call rel32
            &[0xFF, 0xD0],                   // call *%rax
            &[0x41, 0xFF, 0xD3],             // call *%r11
            &[0xFF, 0x15, 1, 2, 3, 4],       // call *disp32(%rip)
            &[0xFF, 0x50, 0x08],             // call *0x8(%rax)
            &[0xFF, 0x90, 1, 2, 3, 4],       // call *disp32(%rax)
            &[0xFF, 0x14, 0x24],             // call *(%rsp)
            &[0xFF, 0x54, 0x24, 0x08],       // call *0x8(%rsp)
            &[0xFF, 0x14, 0xC5, 1, 2, 3, 4], // call *disp32(,%rax,8)
        ] {
            assert!(follows_call(&ends_with(code)), "{code:02x?}");
        }
    }

    #[test]
    fn data_and_other_instructions_are_not_calls() {
        for code in [
            &[0x90, 0x90][..],      // nop; nop (Go's goexit+1 follows a NOP)
            &[0xFF, 0xE0],          // jmp *%rax (FF /4)
            &[0xFF, 0xC0],          // inc %eax (FF /0)
            &[0x48, 0x89, 0xE5],    // mov %rsp,%rbp
            &[0xC3],                // ret
            &[0xFF, 0x15, 1, 2, 3], // truncated call: its length ends past here
        ] {
            assert!(!follows_call(&ends_with(code)), "{code:02x?}");
        }
        assert!(!follows_call(&[]));
        assert!(!follows_call(&[0xFF]));
    }
}
