import EmbeddingKernelsAVX512
import Foundation

/// all-MiniLM-L6-v2 in Swift: a 6-layer BERT (hidden 384, 12 heads, intermediate 1536, GELU, LayerNorm eps 1e-12),
/// mean pooling over the tokens, L2 normalisation. Weights are read from `model.safetensors`.
///
/// `encode` is CPU-bound: call it from a dedicated thread pool, never from the cooperative pool or an event loop.
public final class MiniLMEncoder: Sendable {
    public static let dimension = 384
    static let heads = 12
    static let headSize = 32
    static let intermediate = 1536
    static let layerCount = 6
    static let epsilon: Float = 1e-12

    struct Layer: Sendable {
        var query, key, value, attentionOutput: Linear
        var attentionNorm: Norm
        var intermediate, output: Linear
        var outputNorm: Norm
    }

    struct Linear: Sendable {
        /// The weights packed in panels of 16 outputs: `[panel][input][16]`, so the kernel reads each panel
        /// front to back (PyTorch stores them `[output][input]`).
        var packed: [Float]
        var bias: [Float]
        var inputs: Int
        var outputs: Int

        init(weight: [Float], bias: [Float], inputs: Int, outputs: Int) {
            var packed = [Float](repeating: 0, count: weight.count)
            for o in 0..<outputs {
                let panel = o / 16, lane = o % 16
                for i in 0..<inputs { packed[(panel * inputs + i) * 16 + lane] = weight[o * inputs + i] }
            }
            (self.packed, self.bias, self.inputs, self.outputs) = (packed, bias, inputs, outputs)
        }
    }

    struct Norm: Sendable {
        var weight: [Float]
        var bias: [Float]
    }

    public let tokenizer: WordPieceTokenizer
    let wordEmbeddings: [Float]
    let positionEmbeddings: [Float]
    let tokenTypeEmbeddings: [Float]
    let embeddingNorm: Norm
    let layers: [Layer]
    let vocabularySize: Int
    /// Whether the matrix products use the AVX-512 kernel.
    public let usesAVX512: Bool

    /// Loads `vocab.txt` and `model.safetensors` from a model folder.
    /// - Parameter allowAVX512: Use the AVX-512 matrix product where the CPU has it (false: the AVX2 one everywhere).
    public init(directory: String, allowAVX512: Bool = true) throws(EmbeddingError) {
        usesAVX512 = allowAVX512 && Kernels.cpuHasAVX512
        tokenizer = try WordPieceTokenizer(vocabularyFile: directory + "/vocab.txt")
        let tensors = try SafeTensors(path: directory + "/model.safetensors")
        let hidden = Self.dimension
        guard let vocabularyShape = tensors.entries["embeddings.word_embeddings.weight"]?.shape, vocabularyShape.count == 2 else {
            throw .invalidModel("missing word embeddings")
        }
        vocabularySize = vocabularyShape[0]
        wordEmbeddings = try tensors.floats("embeddings.word_embeddings.weight", shape: [vocabularySize, hidden])
        positionEmbeddings = try tensors.floats("embeddings.position_embeddings.weight", shape: [512, hidden])
        tokenTypeEmbeddings = try tensors.floats("embeddings.token_type_embeddings.weight", shape: [2, hidden])
        func norm(_ prefix: String) throws(EmbeddingError) -> Norm {
            Norm(weight: try tensors.floats(prefix + ".weight", shape: [hidden]), bias: try tensors.floats(prefix + ".bias", shape: [hidden]))
        }
        func linear(_ prefix: String, _ inputs: Int, _ outputs: Int) throws(EmbeddingError) -> Linear {
            Linear(weight: try tensors.floats(prefix + ".weight", shape: [outputs, inputs]),
                   bias: try tensors.floats(prefix + ".bias", shape: [outputs]), inputs: inputs, outputs: outputs)
        }
        embeddingNorm = try norm("embeddings.LayerNorm")
        var layers: [Layer] = []
        for index in 0..<Self.layerCount {
            let prefix = "encoder.layer.\(index)"
            layers.append(Layer(
                query: try linear(prefix + ".attention.self.query", hidden, hidden),
                key: try linear(prefix + ".attention.self.key", hidden, hidden),
                value: try linear(prefix + ".attention.self.value", hidden, hidden),
                attentionOutput: try linear(prefix + ".attention.output.dense", hidden, hidden),
                attentionNorm: try norm(prefix + ".attention.output.LayerNorm"),
                intermediate: try linear(prefix + ".intermediate.dense", hidden, Self.intermediate),
                output: try linear(prefix + ".output.dense", Self.intermediate, hidden),
                outputNorm: try norm(prefix + ".output.LayerNorm")))
        }
        self.layers = layers
    }

    /// The L2-normalised sentence embedding of `text`.
    public func embed(_ text: String) -> [Float] {
        embed(ids: tokenizer.encode(text))
    }

    /// The L2-normalised sentence embedding of a token sequence (with `[CLS]` and `[SEP]`).
    public func embed(ids: [Int32]) -> [Float] {
        embed(batch: [ids])[0]
    }

    /// Embeds several token sequences in one pass.
    ///
    /// The sequences are stacked row by row without padding: the linear layers, LayerNorm and GELU work per token,
    /// so one matrix product serves the whole batch, and attention runs within each sequence. This computes what a
    /// padded batch with an attention mask computes, without spending work on padding.
    public func embed(batch: [[Int32]]) -> [[Float]] {
        let hidden = Self.dimension
        let segments = batch.reduce(into: [Range<Int>]()) { ranges, ids in
            let start = ranges.last?.upperBound ?? 0
            ranges.append(start..<(start + ids.count))
        }
        let count = segments.last?.upperBound ?? 0
        guard count > 0 else { return batch.map { _ in [Float](repeating: 0, count: hidden) } }
        var states = [Float](repeating: 0, count: count * hidden)
        for (ids, segment) in zip(batch, segments) {
            for (position, id) in ids.enumerated() {
                let row = segment.lowerBound + position
                let word = Int(id) < vocabularySize ? Int(id) : Int(tokenizer.unknownID)
                for d in 0..<hidden {
                    states[row * hidden + d] = wordEmbeddings[word * hidden + d] + positionEmbeddings[position * hidden + d]
                        + tokenTypeEmbeddings[d]
                }
            }
        }
        Kernels.layerNorm(&states, rows: count, norm: embeddingNorm)
        for layer in layers {
            let query = Kernels.linear(states, rows: count, layer.query, wide: usesAVX512)
            let key = Kernels.linear(states, rows: count, layer.key, wide: usesAVX512)
            let value = Kernels.linear(states, rows: count, layer.value, wide: usesAVX512)
            let context = Kernels.attention(query: query, key: key, value: value, segments: segments)
            var attended = Kernels.linear(context, rows: count, layer.attentionOutput, wide: usesAVX512)
            Kernels.add(&attended, states)
            Kernels.layerNorm(&attended, rows: count, norm: layer.attentionNorm)
            var inner = Kernels.linear(attended, rows: count, layer.intermediate, wide: usesAVX512)
            Kernels.gelu(&inner)
            var output = Kernels.linear(inner, rows: count, layer.output, wide: usesAVX512)
            Kernels.add(&output, attended)
            Kernels.layerNorm(&output, rows: count, norm: layer.outputNorm)
            states = output
        }
        // Mean pooling over each sequence's tokens, then L2 normalisation.
        return segments.map { segment in
            var pooled = [Float](repeating: 0, count: hidden)
            for row in segment {
                for d in 0..<hidden { pooled[d] += states[row * hidden + d] }
            }
            var norm: Float = 0
            for d in 0..<hidden {
                pooled[d] /= Float(segment.count)
                norm += pooled[d] * pooled[d]
            }
            let scale = 1 / max(norm.squareRoot(), 1e-12)
            return pooled.map { $0 * scale }
        }
    }
}

/// The numeric kernels of the forward pass, written with SIMD vectors.
enum Kernels {
    typealias Vector = SIMD16<Float>

    /// `x · Wᵀ + b` for `rows` rows of `x`: a register-blocked kernel (6 rows × 16 outputs, FMA on 8-wide vectors),
    /// its output columns split across the cores.
    static func linear(_ x: [Float], rows: Int, _ layer: MiniLMEncoder.Linear, wide: Bool) -> [Float] {
        let inputs = layer.inputs
        let outputs = layer.outputs
        precondition(outputs % 16 == 0)
        // Every element is written by the kernel: no need to zero it first.
        var result = [Float](unsafeUninitializedCapacity: rows * outputs) { _, count in count = rows * outputs }
        let blocks = outputs / 16
        let workers = min(parallelism, blocks)
        x.withUnsafeBufferPointer { xs in
            layer.packed.withUnsafeBufferPointer { ws in
                layer.bias.withUnsafeBufferPointer { bs in
                    result.withUnsafeMutableBufferPointer { out in
                        let job = Job(x: xs.baseAddress!, w: ws.baseAddress!, bias: bs.baseAddress!, out: out.baseAddress!,
                                      rows: rows, inputs: inputs, outputs: outputs, wide: wide)
                        if workers <= 1 || rows * inputs * outputs < 1 << 20 {
                            job.run(blocks: 0..<blocks)
                        } else {
                            // Even boundaries: the AVX-512 kernel takes its panels in pairs.
                            let pairs = blocks / 2
                            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                                let start = pairs * worker / workers * 2
                                let end = worker == workers - 1 ? blocks : pairs * (worker + 1) / workers * 2
                                job.run(blocks: start..<end)
                            }
                        }
                    }
                }
            }
        }
        return result
    }

    static let parallelism = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Whether the CPU (and the kernel, which lists only what it enables) offers AVX-512F.
    static let cpuHasAVX512: Bool = {
        #if arch(x86_64) && os(Linux)
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
        return info.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("avx512f") ?? false
        #else
        return false
        #endif
    }()

    /// Pointers for one matrix product; `@unchecked Sendable` because workers write disjoint output columns.
    struct Job: @unchecked Sendable {
        typealias V = SIMD8<Float>
        let x: UnsafePointer<Float>
        let w: UnsafePointer<Float>
        let bias: UnsafePointer<Float>
        let out: UnsafeMutablePointer<Float>
        let rows: Int, inputs: Int, outputs: Int
        let wide: Bool

        func load(_ pointer: UnsafePointer<Float>) -> V {
            UnsafeRawPointer(pointer).loadUnaligned(as: V.self)
        }

        func store(_ value: V, _ pointer: UnsafeMutablePointer<Float>) {
            UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: V.self)
        }

        func run(blocks: Range<Int>) {
            if wide {
                linearAVX512(x: x, packed: w, bias: bias, out: out, rows: rows, inputs: inputs, outputs: outputs, panels: blocks)
                return
            }
            for block in blocks {
                let o = block * 16
                let b0 = load(bias + o), b1 = load(bias + o + 8)
                var r = 0
                while r < rows {
                    // Rows past the end repeat the last row; only real rows are stored.
                    let last = rows - 1
                    var a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1
                    var a30 = b0, a31 = b1, a40 = b0, a41 = b1, a50 = b0, a51 = b1
                    let x0 = x + r * inputs, x1 = x + min(r + 1, last) * inputs, x2 = x + min(r + 2, last) * inputs
                    let x3 = x + min(r + 3, last) * inputs, x4 = x + min(r + 4, last) * inputs, x5 = x + min(r + 5, last) * inputs
                    let panel = w + block * inputs * 16
                    for k in 0..<inputs {
                        let wk = panel + k * 16
                        let w0 = load(wk), w1 = load(wk + 8)
                        var s = V(repeating: x0[k]); a00.addProduct(s, w0); a01.addProduct(s, w1)
                        s = V(repeating: x1[k]); a10.addProduct(s, w0); a11.addProduct(s, w1)
                        s = V(repeating: x2[k]); a20.addProduct(s, w0); a21.addProduct(s, w1)
                        s = V(repeating: x3[k]); a30.addProduct(s, w0); a31.addProduct(s, w1)
                        s = V(repeating: x4[k]); a40.addProduct(s, w0); a41.addProduct(s, w1)
                        s = V(repeating: x5[k]); a50.addProduct(s, w0); a51.addProduct(s, w1)
                    }
                    let base = out + r * outputs + o
                    let valid = min(6, rows - r)
                    store(a00, base); store(a01, base + 8)
                    if valid > 1 { store(a10, base + outputs); store(a11, base + outputs + 8) }
                    if valid > 2 { store(a20, base + 2 * outputs); store(a21, base + 2 * outputs + 8) }
                    if valid > 3 { store(a30, base + 3 * outputs); store(a31, base + 3 * outputs + 8) }
                    if valid > 4 { store(a40, base + 4 * outputs); store(a41, base + 4 * outputs + 8) }
                    if valid > 5 { store(a50, base + 5 * outputs); store(a51, base + 5 * outputs + 8) }
                    r += 6
                }
            }
        }
    }

    /// Multi-head self-attention within each sequence of a stacked batch; heads are spread across the cores.
    static func attention(query: [Float], key: [Float], value: [Float], segments: [Range<Int>]) -> [Float] {
        var context = [Float](repeating: 0, count: query.count)
        let longest = segments.map(\.count).max() ?? 0
        query.withUnsafeBufferPointer { q in
            key.withUnsafeBufferPointer { k in
                value.withUnsafeBufferPointer { v in
                    context.withUnsafeMutableBufferPointer { out in
                        let job = AttentionJob(q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: out.baseAddress!,
                                               segments: segments, longest: longest)
                        let heads = MiniLMEncoder.heads
                        let workers = longest * longest * segments.count < 4096 ? 1 : min(parallelism, heads)
                        if workers == 1 {
                            job.run(heads: 0..<heads)
                        } else {
                            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                                job.run(heads: (heads * worker / workers)..<(heads * (worker + 1) / workers))
                            }
                        }
                    }
                }
            }
        }
        return context
    }

    /// Pointers for attention; `@unchecked Sendable` because workers write disjoint heads (output columns).
    ///
    /// Per sequence and head, the keys are transposed into `[dimension][token]` (tokens padded to 16), so the
    /// scores of 16 keys are one vector FMA per dimension; the softmax uses the vector `exp`.
    struct AttentionJob: @unchecked Sendable {
        let q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>
        let out: UnsafeMutablePointer<Float>
        let segments: [Range<Int>]
        let longest: Int

        func run(heads: Range<Int>) {
            let hidden = MiniLMEncoder.dimension
            let size = MiniLMEncoder.headSize
            let scale = 1 / Float(size).squareRoot()
            let padded = (longest + 15) / 16 * 16
            let transposed = UnsafeMutablePointer<Float>.allocate(capacity: size * padded)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: padded)
            defer {
                transposed.deallocate()
                scores.deallocate()
            }
            for segment in segments {
                let n = segment.count
                let blocks = (n + 15) / 16
                let width = blocks * 16
                // Added to the last block's scores: padded keys get a score whose exp is 0 in float.
                var mask = Vector()
                for lane in 0..<16 where lane >= n - (blocks - 1) * 16 { mask[lane] = -1e30 }
                for head in heads {
                    let offset = head * size
                    // Kᵀ for this head, padded keys at zero (their scores are masked below).
                    transposed.update(repeating: 0, count: size * width)
                    for (j, row) in segment.enumerated() {
                        let kj = k + row * hidden + offset
                        for d in 0..<size { transposed[d * width + j] = kj[d] * scale }
                    }
                    for i in segment {
                        let qi = q + i * hidden + offset
                        var maximum = Vector(repeating: -.infinity)
                        for block in 0..<blocks {
                            // Four independent sums so that the FMAs overlap instead of waiting on each other.
                            var acc0 = Vector(), acc1 = Vector(), acc2 = Vector(), acc3 = Vector()
                            let column = UnsafeRawPointer(transposed + block * 16)
                            let stride = width * 4
                            var d = 0
                            while d < size {
                                acc0.addProduct(Vector(repeating: qi[d]), (column + d * stride).loadUnaligned(as: Vector.self))
                                acc1.addProduct(Vector(repeating: qi[d + 1]), (column + (d + 1) * stride).loadUnaligned(as: Vector.self))
                                acc2.addProduct(Vector(repeating: qi[d + 2]), (column + (d + 2) * stride).loadUnaligned(as: Vector.self))
                                acc3.addProduct(Vector(repeating: qi[d + 3]), (column + (d + 3) * stride).loadUnaligned(as: Vector.self))
                                d += 4
                            }
                            var acc = (acc0 + acc1) + (acc2 + acc3)
                            if block == blocks - 1 { acc += mask }
                            UnsafeMutableRawPointer(scores + block * 16).storeBytes(of: acc, as: Vector.self)
                            maximum = Kernels.maximum(maximum, acc)
                        }
                        let top = Vector(repeating: Kernels.horizontalMax(maximum))
                        var total = Vector()
                        for block in 0..<blocks {
                            let pointer = UnsafeMutableRawPointer(scores + block * 16)
                            let e = Kernels.exp(pointer.load(as: Vector.self) - top)
                            pointer.storeBytes(of: e, as: Vector.self)
                            total += e
                        }
                        let inverse = 1 / Kernels.horizontalSum(total)
                        var c0 = Vector(), c1 = Vector(), c2 = Vector(), c3 = Vector()
                        let rows = UnsafeRawPointer(v + segment.lowerBound * hidden + offset)
                        var j = 0
                        while j + 1 < n {
                            let first = Vector(repeating: scores[j]), second = Vector(repeating: scores[j + 1])
                            let vj = rows + j * hidden * 4, vk = vj + hidden * 4
                            c0.addProduct(first, vj.loadUnaligned(as: Vector.self))
                            c1.addProduct(first, (vj + 64).loadUnaligned(as: Vector.self))
                            c2.addProduct(second, vk.loadUnaligned(as: Vector.self))
                            c3.addProduct(second, (vk + 64).loadUnaligned(as: Vector.self))
                            j += 2
                        }
                        if j < n {
                            let weight = Vector(repeating: scores[j])
                            let vj = rows + j * hidden * 4
                            c0.addProduct(weight, vj.loadUnaligned(as: Vector.self))
                            c1.addProduct(weight, (vj + 64).loadUnaligned(as: Vector.self))
                        }
                        c0 = (c0 + c2) * inverse
                        c1 = (c1 + c3) * inverse
                        let target = UnsafeMutableRawPointer(out + i * hidden + offset)
                        target.storeBytes(of: c0, as: Vector.self)
                        (target + 64).storeBytes(of: c1, as: Vector.self)
                    }
                }
            }
        }
    }

    /// Lane-wise max and min by compare and bit-select (the standard library's `pointwiseMax` handles NaN lane by
    /// lane and does not vectorise).
    @inline(__always)
    static func maximum(_ a: Vector, _ b: Vector) -> Vector {
        let mask = unsafeBitCast(a .> b, to: SIMD16<Int32>.self)
        let x = unsafeBitCast(a, to: SIMD16<Int32>.self), y = unsafeBitCast(b, to: SIMD16<Int32>.self)
        return unsafeBitCast((x & mask) | (y & ~mask), to: Vector.self)
    }

    @inline(__always)
    static func minimum(_ a: Vector, _ b: Vector) -> Vector {
        let mask = unsafeBitCast(a .< b, to: SIMD16<Int32>.self)
        let x = unsafeBitCast(a, to: SIMD16<Int32>.self), y = unsafeBitCast(b, to: SIMD16<Int32>.self)
        return unsafeBitCast((x & mask) | (y & ~mask), to: Vector.self)
    }

    @inline(__always)
    static func horizontalMax(_ v: Vector) -> Float {
        var best = v[0]
        for lane in 1..<16 where v[lane] > best { best = v[lane] }
        return best
    }

    @inline(__always)
    static func horizontalSum(_ v: Vector) -> Float {
        let a = v.lowHalf + v.highHalf
        let b = a.lowHalf + a.highHalf
        let c = b.lowHalf + b.highHalf
        return c[0] + c[1]
    }

    /// `eˣ` for 16 lanes (Cephes-style: 2ⁿ · e^r with |r| ≤ ln2/2 and a degree-6 polynomial; relative error
    /// about 2e-7); -inf gives 0.
    @inline(__always)
    static func exp(_ x: Vector) -> Vector {
        let clamped = minimum(maximum(x, Vector(repeating: -87.3)), Vector(repeating: 88.3))
        // Round to nearest by adding 1.5·2²³: the integer lands in the low mantissa bits (no generic conversions).
        let shifted = clamped * 1.44269504088896341 + 12_582_912
        let n = shifted - 12_582_912
        var r = clamped - n * 0.693359375
        r = r + n * 2.12194440e-4
        var p = Vector(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        p = p * r * r + r + 1
        let exponent = (unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        return p * unsafeBitCast(exponent, to: Vector.self)
    }

    /// erf for 16 lanes: the rational approximation Eigen and XLA use for float (inputs clamped to ±4, where erf
    /// is ±1 in float), accurate to a few ulp.
    @inline(__always)
    static func erf(_ value: Vector) -> Vector {
        let x = minimum(maximum(value, Vector(repeating: -4)), Vector(repeating: 4))
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

    static func add(_ x: inout [Float], _ y: [Float]) {
        for index in x.indices { x[index] += y[index] }
    }

    /// LayerNorm per row, 16 lanes at a time (384 = 24 vectors).
    static func layerNorm(_ x: inout [Float], rows: Int, norm: MiniLMEncoder.Norm) {
        let hidden = MiniLMEncoder.dimension
        let count = hidden / 16
        norm.weight.withUnsafeBufferPointer { weight in
            norm.bias.withUnsafeBufferPointer { bias in
                x.withUnsafeMutableBufferPointer { values in
                    let g = UnsafeRawPointer(weight.baseAddress!), b = UnsafeRawPointer(bias.baseAddress!)
                    for row in 0..<rows {
                        let base = UnsafeMutableRawPointer(values.baseAddress! + row * hidden)
                        var sum = Vector()
                        for i in 0..<count { sum += base.loadUnaligned(fromByteOffset: i * 64, as: Vector.self) }
                        let mean = Vector(repeating: horizontalSum(sum) / Float(hidden))
                        var squares = Vector()
                        for i in 0..<count {
                            let centred = base.loadUnaligned(fromByteOffset: i * 64, as: Vector.self) - mean
                            squares.addProduct(centred, centred)
                        }
                        let inverse = Vector(repeating: 1 / (horizontalSum(squares) / Float(hidden) + MiniLMEncoder.epsilon).squareRoot())
                        for i in 0..<count {
                            let value = base.loadUnaligned(fromByteOffset: i * 64, as: Vector.self)
                            let scaled = (value - mean) * inverse * g.loadUnaligned(fromByteOffset: i * 64, as: Vector.self)
                                + b.loadUnaligned(fromByteOffset: i * 64, as: Vector.self)
                            base.storeBytes(of: scaled, toByteOffset: i * 64, as: Vector.self)
                        }
                    }
                }
            }
        }
    }

    /// GELU with the exact error function, as BERT's `gelu`; large inputs are split across the cores.
    static func gelu(_ x: inout [Float]) {
        let count = x.count
        x.withUnsafeMutableBufferPointer { buffer in
            let values = GELUJob(values: buffer.baseAddress!)
            let workers = count < 1 << 15 ? 1 : parallelism
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                values.run((count * worker / workers)..<(count * (worker + 1) / workers))
            }
        }
    }

    /// `@unchecked Sendable`: workers touch disjoint ranges.
    struct GELUJob: @unchecked Sendable {
        let values: UnsafeMutablePointer<Float>

        func run(_ range: Range<Int>) {
            var index = range.lowerBound
            while index + 16 <= range.upperBound {
                let pointer = UnsafeMutableRawPointer(values + index)
                let value = pointer.loadUnaligned(as: Vector.self)
                pointer.storeBytes(of: 0.5 * value * (1 + Kernels.erf(value * 0.70710678118654752)), as: Vector.self)
                index += 16
            }
            for tail in index..<range.upperBound {
                let value = values[tail]
                values[tail] = 0.5 * value * (1 + erff(value * 0.70710678118654752))
            }
        }
    }
}
