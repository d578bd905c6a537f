/// The encoder's element-wise kernels, written once and compiled twice: `Embeddings` inlines them into its AVX2
/// build (`-target-cpu haswell`, two 256-bit halves per `SIMD16`), while the `…AVX512` entry points below are
/// compiled in this target for 512-bit registers (one instruction per `SIMD16` operation).
///
/// Everything here is `@_transparent`, so that it is always inlined:
/// - `@inlinable` lets a caller call this target's own copy instead, and that copy is AVX-512 code: the AVX2 path
///   would then fault on a CPU without AVX-512 (seen in the disassembly: `Embeddings` called `softmaxRows` here);
/// - with `@inline(__always)`, `vectorExp` still stayed a call, whose `SIMD16` argument travels in four 128-bit
///   registers and was computed in four 128-bit pieces (10% of an encoding in `perf`).

public typealias FloatVector = SIMD16<Float>

/// Lane-wise max and min by compare and blend (`replacing(with:where:)` compiles to a compare and a blend; the
/// standard library's `pointwiseMax` handles NaN lane by lane and does not vectorise).
@_transparent
public func vectorMaximum(_ a: FloatVector, _ b: FloatVector) -> FloatVector {
    a.replacing(with: b, where: a .< b)
}

@_transparent
public func vectorMinimum(_ a: FloatVector, _ b: FloatVector) -> FloatVector {
    a.replacing(with: b, where: b .< a)
}

@_transparent
public func horizontalMax(_ v: FloatVector) -> Float {
    // Halving by blends: a lane-by-lane loop compiles to extracts and scalar compares.
    var a = v.lowHalf
    a.replace(with: v.highHalf, where: v.highHalf .> a)
    var b = a.lowHalf
    b.replace(with: a.highHalf, where: a.highHalf .> b)
    var c = b.lowHalf
    c.replace(with: b.highHalf, where: b.highHalf .> c)
    return max(c[0], c[1])
}

@_transparent
public func horizontalSum(_ v: FloatVector) -> Float {
    let a = v.lowHalf + v.highHalf
    let b = a.lowHalf + a.highHalf
    let c = b.lowHalf + b.highHalf
    return c[0] + c[1]
}

/// `eˣ` for 16 lanes (Cephes-style: 2ⁿ · e^r with |r| ≤ ln2/2 and a degree-6 polynomial; relative error
/// about 2e-7); -inf gives 0.
@_transparent
public func vectorExp(_ x: FloatVector) -> FloatVector {
    let clamped = vectorMinimum(vectorMaximum(x, FloatVector(repeating: -87.3)), FloatVector(repeating: 88.3))
    // Round to nearest by adding 1.5·2²³: the integer lands in the low mantissa bits (no generic conversions).
    let shifted = clamped * 1.44269504088896341 + 12_582_912
    let n = shifted - 12_582_912
    var r = clamped - n * 0.693359375
    r = r + n * 2.12194440e-4
    var p = FloatVector(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    p = p * r * r + r + 1
    let exponent = (unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
    return p * unsafeBitCast(exponent, to: FloatVector.self)
}

/// erf for 16 lanes: the rational approximation Eigen and XLA use for float (inputs clamped to ±4, where erf
/// is ±1 in float), accurate to a few ulp.
@_transparent
public func vectorErf(_ value: FloatVector) -> FloatVector {
    let x = vectorMinimum(vectorMaximum(value, FloatVector(repeating: -4)), FloatVector(repeating: 4))
    let x2 = x * x
    var p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    p = p * x2 + -2.10102402082508e-06
    p = p * x2 + -5.69250639462346e-05
    p = p * x2 + -7.34990630326855e-04
    p = p * x2 + -2.95459980854025e-03
    p = p * x2 + -1.60960333262415e-02
    p = p * x
    var q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04
    q = q * x2 + -1.68282697438203e-03
    q = q * x2 + -7.37332916720468e-03
    q = q * x2 + -1.42647390514189e-02
    return p / q
}

/// The exponentials of a softmax in place over `rows` rows of `blocks` × 16 scores (row `i` at
/// `scores + i · blocks · 16`; masked lanes hold -1e30 and become 0), and the reciprocal of each row's sum in
/// `inverses[i]` (applied to the attention's context afterwards: 32 products instead of one per key).
@_transparent
public func softmaxRows(_ scores: UnsafeMutablePointer<Float>, rows: Int, blocks: Int,
                        inverses: UnsafeMutablePointer<Float>) {
    for i in 0..<rows {
        let row = UnsafeMutableRawPointer(scores + i * blocks * 16)
        var maximum = FloatVector(repeating: -.infinity)
        for block in 0..<blocks {
            maximum = vectorMaximum(maximum, row.load(fromByteOffset: block * 64, as: FloatVector.self))
        }
        let top = FloatVector(repeating: horizontalMax(maximum))
        var total = FloatVector()
        for block in 0..<blocks {
            let e = vectorExp(row.load(fromByteOffset: block * 64, as: FloatVector.self) - top)
            row.storeBytes(of: e, toByteOffset: block * 64, as: FloatVector.self)
            total += e
        }
        inverses[i] = 1 / horizontalSum(total)
    }
}

/// GELU with the exact error function, as BERT's `gelu`, in place over `count` values.
@_transparent
public func geluInPlace(_ values: UnsafeMutablePointer<Float>, count: Int) {
    @inline(__always) func gelu(_ value: FloatVector) -> FloatVector {
        0.5 * value * (1 + vectorErf(value * 0.70710678118654752))
    }
    var index = 0
    while index + 16 <= count {
        let pointer = UnsafeMutableRawPointer(values + index)
        pointer.storeBytes(of: gelu(pointer.loadUnaligned(as: FloatVector.self)), as: FloatVector.self)
        index += 16
    }
    guard index < count else { return }
    // The last few values, through one vector padded with zeros.
    var tail = FloatVector()
    for lane in 0..<(count - index) { tail[lane] = values[index + lane] }
    tail = gelu(tail)
    for lane in 0..<(count - index) { values[index + lane] = tail[lane] }
}

/// `softmaxRows` compiled for AVX-512.
public func softmaxRowsAVX512(_ scores: UnsafeMutablePointer<Float>, rows: Int, blocks: Int,
                              inverses: UnsafeMutablePointer<Float>) {
    softmaxRows(scores, rows: rows, blocks: blocks, inverses: inverses)
}

/// `geluInPlace` compiled for AVX-512.
public func geluAVX512(_ values: UnsafeMutablePointer<Float>, count: Int) {
    geluInPlace(values, count: count)
}
