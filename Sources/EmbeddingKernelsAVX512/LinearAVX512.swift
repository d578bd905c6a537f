/// The matrix product of the MiniLM encoder compiled for AVX-512 (this target alone is built with
/// `-target-cpu skylake-avx512`). Call it only where `/proc/cpuinfo` lists `avx512f`; `Embeddings` checks.
///
/// `out[r][o] = bias[o] + Σₖ x[r][k] · W[o][k]` for output panels `panels` (16 outputs each, stored
/// `[panel][input][16]`): 12 rows × 2 panels per step (24 accumulators of 16 lanes in zmm registers), or 8 rows
/// for the last 16 or fewer (a single query's 14 rows then cost 16, not 24) unless 9–12 remain (one step of 12).
/// Rows past the end repeat the last row and are not stored. Callers pass a few hundred rows at a time, so that
/// the rows stay in L2 while every panel passes over them.
public func linearAVX512(x: UnsafePointer<Float>, packed w: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                         out: UnsafeMutablePointer<Float>, rows: Int, inputs: Int, outputs: Int, panels: Range<Int>) {
    var panel = panels.lowerBound
    while panel < panels.upperBound {
        let pair = panel + 1 < panels.upperBound
        let second = pair ? panel + 1 : panel
        let p0 = w + panel * inputs * 16, p1 = w + second * inputs * 16
        let b0 = load(bias + panel * 16), b1 = load(bias + second * 16)
        var r = 0
        while r < rows {
            let remaining = rows - r
            // 9–12 rows: one 12-row step (12 row-costs) beats two 8-row steps (16); 13–16: two 8-row steps (16)
            // beat 12 + 8 (20).
            if remaining > 16 || (remaining > 8 && remaining <= 12) {
                rows12(x: x, p0: p0, p1: p1, b0: b0, b1: b1, out: out, r: r, rows: rows, inputs: inputs, outputs: outputs,
                       panel: panel, second: second, pair: pair)
                r += 12
            } else {
                rows8(x: x, p0: p0, p1: p1, b0: b0, b1: b1, out: out, r: r, rows: rows, inputs: inputs, outputs: outputs,
                      panel: panel, second: second, pair: pair)
                r += 8
            }
        }
        panel += 2
    }
}

private typealias V = SIMD16<Float>

@inline(__always) private func load(_ pointer: UnsafePointer<Float>) -> V {
    UnsafeRawPointer(pointer).loadUnaligned(as: V.self)
}

@inline(__always) private func store(_ value: V, _ pointer: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: V.self)
}

@inline(__always)
private func rows12(x: UnsafePointer<Float>, p0: UnsafePointer<Float>, p1: UnsafePointer<Float>, b0: SIMD16<Float>,
                    b1: SIMD16<Float>, out: UnsafeMutablePointer<Float>, r: Int, rows: Int, inputs: Int, outputs: Int,
                    panel: Int, second: Int, pair: Bool) {
    let last = rows - 1
    let x0 = x + r * inputs, x1 = x + min(r + 1, last) * inputs, x2 = x + min(r + 2, last) * inputs
    let x3 = x + min(r + 3, last) * inputs, x4 = x + min(r + 4, last) * inputs, x5 = x + min(r + 5, last) * inputs
    let x6 = x + min(r + 6, last) * inputs, x7 = x + min(r + 7, last) * inputs
    let x8 = x + min(r + 8, last) * inputs, x9 = x + min(r + 9, last) * inputs
    let x10 = x + min(r + 10, last) * inputs, x11 = x + min(r + 11, last) * inputs
    var a80 = b0, a81 = b1, a90 = b0, a91 = b1, a100 = b0, a101 = b1, a110 = b0, a111 = b1
    var a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1
    var a40 = b0, a41 = b1, a50 = b0, a51 = b1, a60 = b0, a61 = b1, a70 = b0, a71 = b1
    for k in 0..<inputs {
        let w0 = load(p0 + k * 16), w1 = load(p1 + k * 16)
        var s = V(repeating: x0[k]); a00.addProduct(s, w0); a01.addProduct(s, w1)
        s = V(repeating: x1[k]); a10.addProduct(s, w0); a11.addProduct(s, w1)
        s = V(repeating: x2[k]); a20.addProduct(s, w0); a21.addProduct(s, w1)
        s = V(repeating: x3[k]); a30.addProduct(s, w0); a31.addProduct(s, w1)
        s = V(repeating: x4[k]); a40.addProduct(s, w0); a41.addProduct(s, w1)
        s = V(repeating: x5[k]); a50.addProduct(s, w0); a51.addProduct(s, w1)
        s = V(repeating: x6[k]); a60.addProduct(s, w0); a61.addProduct(s, w1)
        s = V(repeating: x7[k]); a70.addProduct(s, w0); a71.addProduct(s, w1)
        s = V(repeating: x8[k]); a80.addProduct(s, w0); a81.addProduct(s, w1)
        s = V(repeating: x9[k]); a90.addProduct(s, w0); a91.addProduct(s, w1)
        s = V(repeating: x10[k]); a100.addProduct(s, w0); a101.addProduct(s, w1)
        s = V(repeating: x11[k]); a110.addProduct(s, w0); a111.addProduct(s, w1)
    }
    let valid = min(12, rows - r)
    let base0 = out + r * outputs + panel * 16, base1 = out + r * outputs + second * 16
    store(a00, base0); if pair { store(a01, base1) }
    if valid > 1 { store(a10, base0 + outputs); if pair { store(a11, base1 + outputs) } }
    if valid > 2 { store(a20, base0 + 2 * outputs); if pair { store(a21, base1 + 2 * outputs) } }
    if valid > 3 { store(a30, base0 + 3 * outputs); if pair { store(a31, base1 + 3 * outputs) } }
    if valid > 4 { store(a40, base0 + 4 * outputs); if pair { store(a41, base1 + 4 * outputs) } }
    if valid > 5 { store(a50, base0 + 5 * outputs); if pair { store(a51, base1 + 5 * outputs) } }
    if valid > 6 { store(a60, base0 + 6 * outputs); if pair { store(a61, base1 + 6 * outputs) } }
    if valid > 7 { store(a70, base0 + 7 * outputs); if pair { store(a71, base1 + 7 * outputs) } }
    if valid > 8 { store(a80, base0 + 8 * outputs); if pair { store(a81, base1 + 8 * outputs) } }
    if valid > 9 { store(a90, base0 + 9 * outputs); if pair { store(a91, base1 + 9 * outputs) } }
    if valid > 10 { store(a100, base0 + 10 * outputs); if pair { store(a101, base1 + 10 * outputs) } }
    if valid > 11 { store(a110, base0 + 11 * outputs); if pair { store(a111, base1 + 11 * outputs) } }
}

@inline(__always)
private func rows8(x: UnsafePointer<Float>, p0: UnsafePointer<Float>, p1: UnsafePointer<Float>, b0: SIMD16<Float>,
                    b1: SIMD16<Float>, out: UnsafeMutablePointer<Float>, r: Int, rows: Int, inputs: Int, outputs: Int,
                    panel: Int, second: Int, pair: Bool) {
    let last = rows - 1
    let x0 = x + r * inputs, x1 = x + min(r + 1, last) * inputs, x2 = x + min(r + 2, last) * inputs
    let x3 = x + min(r + 3, last) * inputs, x4 = x + min(r + 4, last) * inputs, x5 = x + min(r + 5, last) * inputs
    let x6 = x + min(r + 6, last) * inputs, x7 = x + min(r + 7, last) * inputs
    var a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1
    var a40 = b0, a41 = b1, a50 = b0, a51 = b1, a60 = b0, a61 = b1, a70 = b0, a71 = b1
    for k in 0..<inputs {
        let w0 = load(p0 + k * 16), w1 = load(p1 + k * 16)
        var s = V(repeating: x0[k]); a00.addProduct(s, w0); a01.addProduct(s, w1)
        s = V(repeating: x1[k]); a10.addProduct(s, w0); a11.addProduct(s, w1)
        s = V(repeating: x2[k]); a20.addProduct(s, w0); a21.addProduct(s, w1)
        s = V(repeating: x3[k]); a30.addProduct(s, w0); a31.addProduct(s, w1)
        s = V(repeating: x4[k]); a40.addProduct(s, w0); a41.addProduct(s, w1)
        s = V(repeating: x5[k]); a50.addProduct(s, w0); a51.addProduct(s, w1)
        s = V(repeating: x6[k]); a60.addProduct(s, w0); a61.addProduct(s, w1)
        s = V(repeating: x7[k]); a70.addProduct(s, w0); a71.addProduct(s, w1)
    }
    let valid = min(8, rows - r)
    let base0 = out + r * outputs + panel * 16, base1 = out + r * outputs + second * 16
    store(a00, base0); if pair { store(a01, base1) }
    if valid > 1 { store(a10, base0 + outputs); if pair { store(a11, base1 + outputs) } }
    if valid > 2 { store(a20, base0 + 2 * outputs); if pair { store(a21, base1 + 2 * outputs) } }
    if valid > 3 { store(a30, base0 + 3 * outputs); if pair { store(a31, base1 + 3 * outputs) } }
    if valid > 4 { store(a40, base0 + 4 * outputs); if pair { store(a41, base1 + 4 * outputs) } }
    if valid > 5 { store(a50, base0 + 5 * outputs); if pair { store(a51, base1 + 5 * outputs) } }
    if valid > 6 { store(a60, base0 + 6 * outputs); if pair { store(a61, base1 + 6 * outputs) } }
    if valid > 7 { store(a70, base0 + 7 * outputs); if pair { store(a71, base1 + 7 * outputs) } }
}
