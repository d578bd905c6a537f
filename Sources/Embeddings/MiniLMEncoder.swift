import EmbeddingKernelsAVX512
import Foundation
import SwitchyardCore

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
    /// 30,522 × 384 floats (47 MB), read in place from the memory-mapped model file: a request touches only the
    /// rows of its tokens, so the table's pages stay out of the process's memory until used (the packed layer
    /// weights, 43 MB, are the model's resident cost).
    let wordEmbeddings: MappedMatrix
    let positionEmbeddings: [Float]
    let tokenTypeEmbeddings: [Float]
    let embeddingNorm: Norm
    let layers: [Layer]
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
        wordEmbeddings = try tensors.mapped("embeddings.word_embeddings.weight", rows: vocabularyShape[0], width: hidden)
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
        // Everything but the word embeddings was copied out: drop the pages that reading it touched.
        tensors.file.releaseTouchedPages()
    }

    /// The L2-normalised input embedding of one word (the mean of its word pieces' rows, before any context): what
    /// the semantic cache's pair verifier compares a substituted word with. Every text gives a vector.
    public func wordVector(_ word: String) -> [Float] {
        let ids = tokenizer.encode(word).filter { $0 != tokenizer.clsID && $0 != tokenizer.sepID }
        var vector = [Float](repeating: 0, count: wordEmbeddings.width)
        vector.withUnsafeMutableBufferPointer { target in
            guard let base = target.baseAddress else { return }
            for id in ids.isEmpty ? [tokenizer.unknownID] : ids {
                wordEmbeddings.addRow(id >= 0 && Int(id) < wordEmbeddings.rows ? Int(id) : Int(tokenizer.unknownID), into: base)
            }
        }
        var norm: Float = 0
        for value in vector { norm += value * value }
        let scale = norm > 0 ? 1 / norm.squareRoot() : 0
        return vector.map { $0 * scale }
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
    ///
    /// A batch large enough to keep every core busy is split into contiguous groups of sequences with about the
    /// same number of tokens, one group per core, each run through all six layers on its own: no core waits for
    /// another between the products, and each core's rows stay in its own cache. Smaller batches (a single query)
    /// split each product across the cores instead.
    public func embed(batch: [[Int32]]) -> [[Float]] {
        let workers = Kernels.parallelism
        let tokens = batch.reduce(0) { $0 + $1.count }
        guard workers > 1, batch.count >= workers, tokens >= Self.tokensPerGroup * workers else {
            return encodeSplittingProducts(batch, workers: workers)
        }
        var groups: [Range<Int>] = []
        var start = 0, sum = 0
        for (index, ids) in batch.enumerated() {
            sum += ids.count
            let remainingGroups = workers - groups.count - 1
            // Close the group once it holds its share of the tokens, leaving a sequence for each later group.
            if remainingGroups > 0, sum * workers >= tokens * (groups.count + 1), batch.count - index - 1 >= remainingGroups {
                groups.append(start..<(index + 1))
                start = index + 1
            }
        }
        groups.append(start..<batch.count)
        // Sequences too uneven to give every core a group (one long text after short ones): split the products.
        guard groups.count == workers else { return encodeSplittingProducts(batch, workers: workers) }
        let ranges = groups
        let results = Locked([[[Float]]](repeating: [], count: groups.count))
        DispatchQueue.concurrentPerform(iterations: ranges.count) { group in
            let embeddings = encode(batch: Array(batch[ranges[group]]), workers: 1)
            results.withLock { $0[group] = embeddings }
        }
        return results.withLock { $0.flatMap { $0 } }
    }

    /// Batches with fewer tokens than this per core are not split by sequence.
    static let tokensPerGroup = 96

    /// The forward pass with each product split across the cores: with two cores, between this thread and the
    /// pair worker's spinning helper (unless another encoding holds it), otherwise by `DispatchQueue`.
    func encodeSplittingProducts(_ batch: [[Int32]], workers: Int) -> [[Float]] {
        guard workers == 2 else { return encode(batch: batch, workers: workers) }
        return PairWorker.shared.session { pair in encode(batch: batch, workers: workers, pair: pair) }
    }

    /// The forward pass for a batch, each product split across `workers` cores.
    func encode(batch: [[Int32]], workers: Int, pair: PairWorker? = nil) -> [[Float]] {
        let hidden = Self.dimension
        let segments = batch.reduce(into: [Range<Int>]()) { ranges, ids in
            let start = ranges.last?.upperBound ?? 0
            ranges.append(start..<(start + ids.count))
        }
        let count = segments.last?.upperBound ?? 0
        guard count > 0 else { return batch.map { _ in [Float](repeating: 0, count: hidden) } }
        var states = [Float](repeating: 0, count: count * hidden)
        states.withUnsafeMutableBufferPointer { states in
            for (ids, segment) in zip(batch, segments) {
                for (position, id) in ids.enumerated() {
                    let row = states.baseAddress! + (segment.lowerBound + position) * hidden
                    let word = id >= 0 && Int(id) < wordEmbeddings.rows ? Int(id) : Int(tokenizer.unknownID)
                    wordEmbeddings.addRow(word, into: row)
                    for d in 0..<hidden {
                        row[d] = row[d] + positionEmbeddings[position * hidden + d] + tokenTypeEmbeddings[d]
                    }
                }
            }
        }
        Kernels.layerNorm(&states, rows: count, norm: embeddingNorm)
        // One set of buffers for all six layers: a fresh array per product costs a page fault per 4 KiB, and the
        // kernel's time zeroing pages (4% of a batch of passages).
        var query: [Float] = [], key: [Float] = [], value: [Float] = [], context: [Float] = []
        var attended: [Float] = [], inner: [Float] = [], output: [Float] = []
        for layer in layers {
            Kernels.linear(states, rows: count, layer.query, wide: usesAVX512, workers: workers, pair: pair, into: &query)
            Kernels.linear(states, rows: count, layer.key, wide: usesAVX512, workers: workers, pair: pair, into: &key)
            Kernels.linear(states, rows: count, layer.value, wide: usesAVX512, workers: workers, pair: pair, into: &value)
            Kernels.attention(query: query, key: key, value: value, segments: segments, wide: usesAVX512,
                              workers: workers, into: &context)
            Kernels.linear(context, rows: count, layer.attentionOutput, wide: usesAVX512, workers: workers, pair: pair, into: &attended)
            Kernels.add(&attended, states)
            Kernels.layerNorm(&attended, rows: count, norm: layer.attentionNorm)
            Kernels.linear(attended, rows: count, layer.intermediate, wide: usesAVX512, workers: workers, pair: pair, into: &inner)
            Kernels.gelu(&inner, wide: usesAVX512, workers: workers)
            Kernels.linear(inner, rows: count, layer.output, wide: usesAVX512, workers: workers, pair: pair, into: &output)
            Kernels.add(&output, attended)
            Kernels.layerNorm(&output, rows: count, norm: layer.outputNorm)
            swap(&states, &output)
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
    /// its output columns split across up to `workers` cores.
    /// `result` is reused when it already has the right size.
    static func linear(_ x: [Float], rows: Int, _ layer: MiniLMEncoder.Linear, wide: Bool, workers: Int,
                       pair: PairWorker? = nil, into result: inout [Float]) {
        let inputs = layer.inputs
        let outputs = layer.outputs
        precondition(outputs % 16 == 0)
        if result.count != rows * outputs {
            // Every element is written by the kernel: no need to zero it first.
            result = [Float](unsafeUninitializedCapacity: rows * outputs) { _, count in count = rows * outputs }
        }
        let blocks = outputs / 16
        let workers = min(workers, blocks)
        x.withUnsafeBufferPointer { xs in
            layer.packed.withUnsafeBufferPointer { ws in
                layer.bias.withUnsafeBufferPointer { bs in
                    result.withUnsafeMutableBufferPointer { out in
                        let job = Job(x: xs.baseAddress!, w: ws.baseAddress!, bias: bs.baseAddress!, out: out.baseAddress!,
                                      rows: rows, inputs: inputs, outputs: outputs, wide: wide)
                        let work = rows * inputs * outputs
                        if let pair, work >= Kernels.minimumPairProduct {
                            // Two halves on even panel boundaries (the AVX-512 kernel takes panels in pairs).
                            let middle = blocks / 4 * 2
                            pair.run { half in job.run(blocks: half == 0 ? 0..<middle : middle..<blocks) }
                        } else if workers <= 1 || work < Kernels.minimumSplitProduct {
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
    }

    /// Products smaller than this many multiply-adds run on one core: handing half of one to a second thread costs a
    /// wake-up of that thread, 50–100 µs on a VM, while this much work takes about 60 µs on one core. (A 14-token query
    /// took 4.5–4.8 ms single-threaded and 6.5–7.1 ms with every product split, with a threshold of 2²⁰.)
    static let minimumSplitProduct = 1 << 23

    /// Products split with the pair worker from this many multiply-adds (its hand-off is a spin, not a wake-up).
    static let minimumPairProduct = 1 << 17

    /// Threads one encoding may use: the cores, or `SWITCHYARD_EMBEDDING_THREADS` when set (1 or more).
    static let parallelism: Int = {
        if let value = ProcessInfo.processInfo.environment["SWITCHYARD_EMBEDDING_THREADS"].flatMap(Int.init), value >= 1 {
            return value
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

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
        /// Rows processed together by the AVX-512 kernel: 240 rows of 384 inputs are 360 KiB, of 1,536 inputs
        /// 1.4 MiB, both within a 2 MiB L2. (Measured single-threaded, 1,457 rows × 384 × 384: 158 GFLOP/s in
        /// chunks of 240 rows, 127–130 in one pass.)
        static let chunkRows = 240

        func load(_ pointer: UnsafePointer<Float>) -> V {
            UnsafeRawPointer(pointer).loadUnaligned(as: V.self)
        }

        func store(_ value: V, _ pointer: UnsafeMutablePointer<Float>) {
            UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: V.self)
        }

        func run(blocks: Range<Int>) {
            if wide {
                // Rows in chunks that stay in the core's L2 cache while every panel of this worker passes over them
                // (all rows at once would stream the whole input from L3 once per panel pair).
                var start = 0
                while start < rows {
                    let count = min(Self.chunkRows, rows - start)
                    linearAVX512(x: x + start * inputs, packed: w, bias: bias, out: out + start * outputs, rows: count,
                                 inputs: inputs, outputs: outputs, panels: blocks)
                    start += count
                }
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

    /// Multi-head self-attention within each sequence of a stacked batch; heads are spread across up to `workers`
    /// cores.
    /// Every element of `context` is written; it is reused when it already has the right size.
    static func attention(query: [Float], key: [Float], value: [Float], segments: [Range<Int>], wide: Bool,
                          workers: Int, into context: inout [Float]) {
        if context.count != query.count { context = [Float](repeating: 0, count: query.count) }
        let longest = segments.map(\.count).max() ?? 0
        query.withUnsafeBufferPointer { q in
            key.withUnsafeBufferPointer { k in
                value.withUnsafeBufferPointer { v in
                    context.withUnsafeMutableBufferPointer { out in
                        let job = AttentionJob(q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: out.baseAddress!,
                                               segments: segments, longest: longest, wide: wide)
                        let heads = MiniLMEncoder.heads
                        let workers = longest * longest * segments.count < 4096 ? 1 : min(workers, heads)
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
    }

    /// Pointers for attention; `@unchecked Sendable` because workers write disjoint heads (output columns).
    ///
    /// Per sequence and head, both products run on the matrix-product kernel of the linear layers:
    /// - scores = (Q·scale) · Kᵀ, with the keys packed as the kernel's weight panels (`[key / 16][dimension][16]`,
    ///   keys padded to 16) and a "bias" of 0 for real keys and -1e30 for padding, whose exp is 0 in float;
    /// - context = P · V, with the values packed as two panels of 16 dimensions (`[panel][key][16]`, padded keys 0),
    ///   then scaled by each row's 1 / Σ exp.
    struct AttentionJob: @unchecked Sendable {
        let q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>
        let out: UnsafeMutablePointer<Float>
        let segments: [Range<Int>]
        let longest: Int
        let wide: Bool

        func run(heads: Range<Int>) {
            let hidden = MiniLMEncoder.dimension
            let size = MiniLMEncoder.headSize
            let scale = 1 / Float(size).squareRoot()
            let padded = (longest + 15) / 16 * 16
            let queries = UnsafeMutablePointer<Float>.allocate(capacity: longest * size)
            let keys = UnsafeMutablePointer<Float>.allocate(capacity: padded * size)
            let values = UnsafeMutablePointer<Float>.allocate(capacity: padded * size)
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: longest * padded)
            let context = UnsafeMutablePointer<Float>.allocate(capacity: longest * size)
            let mask = UnsafeMutablePointer<Float>.allocate(capacity: padded)
            let zero = UnsafeMutablePointer<Float>.allocate(capacity: size)
            zero.initialize(repeating: 0, count: size)
            let inverses = UnsafeMutablePointer<Float>.allocate(capacity: longest)
            defer {
                for buffer in [queries, keys, values, scores, context, mask, zero, inverses] { buffer.deallocate() }
            }
            for segment in segments {
                let n = segment.count
                let blocks = (n + 15) / 16
                let width = blocks * 16
                for j in 0..<width { mask[j] = j < n ? 0 : -1e30 }
                for head in heads {
                    let offset = head * size
                    // Padded keys: zero in their key panel and in both value panels (real ones are written below).
                    if n < width {
                        let lastPanel = keys + (blocks - 1) * size * 16
                        for d in 0..<size {
                            (lastPanel + d * 16 + n % 16).update(repeating: 0, count: width - n)
                        }
                        (values + n * 16).update(repeating: 0, count: (width - n) * 16)
                        (values + (width + n) * 16).update(repeating: 0, count: (width - n) * 16)
                    }
                    for (j, row) in segment.enumerated() {
                        let base = row * hidden + offset
                        let keyPanel = keys + (j / 16) * size * 16 + j % 16
                        for d in 0..<size {
                            queries[j * size + d] = q[base + d] * scale
                            keyPanel[d * 16] = k[base + d]
                        }
                        for d in 0..<16 {
                            values[j * 16 + d] = v[base + d]
                            values[(width + j) * 16 + d] = v[base + 16 + d]
                        }
                    }
                    Job(x: queries, w: keys, bias: mask, out: scores, rows: n, inputs: size, outputs: width, wide: wide)
                        .run(blocks: 0..<blocks)
                    if wide {
                        softmaxRowsAVX512(scores, rows: n, blocks: blocks, inverses: inverses)
                    } else {
                        softmaxRows(scores, rows: n, blocks: blocks, inverses: inverses)
                    }
                    Job(x: scores, w: values, bias: zero, out: context, rows: n, inputs: width, outputs: size, wide: wide)
                        .run(blocks: 0..<2)
                    for i in 0..<n {
                        let source = UnsafeRawPointer(context + i * size)
                        let target = UnsafeMutableRawPointer(out + (segment.lowerBound + i) * hidden + offset)
                        let factor = Vector(repeating: inverses[i])
                        target.storeBytes(of: source.load(as: Vector.self) * factor, as: Vector.self)
                        (target + 64).storeBytes(of: (source + 64).load(as: Vector.self) * factor, as: Vector.self)
                    }
                }
            }
        }
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
                        let mean = Vector(repeating: EmbeddingKernelsAVX512.horizontalSum(sum) / Float(hidden))
                        var squares = Vector()
                        for i in 0..<count {
                            let centred = base.loadUnaligned(fromByteOffset: i * 64, as: Vector.self) - mean
                            squares.addProduct(centred, centred)
                        }
                        let inverse = Vector(repeating: 1 / (EmbeddingKernelsAVX512.horizontalSum(squares) / Float(hidden) + MiniLMEncoder.epsilon).squareRoot())
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

    /// GELU with the exact error function, as BERT's `gelu`; large inputs are split across up to `workers` cores.
    static func gelu(_ x: inout [Float], wide: Bool, workers: Int) {
        let count = x.count
        x.withUnsafeMutableBufferPointer { buffer in
            let values = GELUJob(values: buffer.baseAddress!, wide: wide)
            let workers = count < 1 << 15 ? 1 : workers
            DispatchQueue.concurrentPerform(iterations: workers) { worker in
                values.run((count * worker / workers)..<(count * (worker + 1) / workers))
            }
        }
    }

    /// `@unchecked Sendable`: workers touch disjoint ranges.
    struct GELUJob: @unchecked Sendable {
        let values: UnsafeMutablePointer<Float>
        let wide: Bool

        func run(_ range: Range<Int>) {
            if wide {
                geluAVX512(values + range.lowerBound, count: range.count)
            } else {
                geluInPlace(values + range.lowerBound, count: range.count)
            }
        }
    }
}
