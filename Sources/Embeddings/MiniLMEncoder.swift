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
        var weight: [Float]  // out × in, row-major (PyTorch layout)
        var bias: [Float]
        var inputs: Int
        var outputs: Int
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

    /// Loads `vocab.txt` and `model.safetensors` from a model folder.
    public init(directory: String) throws(EmbeddingError) {
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
            let query = Kernels.linear(states, rows: count, layer.query)
            let key = Kernels.linear(states, rows: count, layer.key)
            let value = Kernels.linear(states, rows: count, layer.value)
            let context = Kernels.attention(query: query, key: key, value: value, segments: segments)
            var attended = Kernels.linear(context, rows: count, layer.attentionOutput)
            Kernels.add(&attended, states)
            Kernels.layerNorm(&attended, rows: count, norm: layer.attentionNorm)
            var inner = Kernels.linear(attended, rows: count, layer.intermediate)
            Kernels.gelu(&inner)
            var output = Kernels.linear(inner, rows: count, layer.output)
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

    /// `x · Wᵀ + b` for `rows` rows of `x`.
    static func linear(_ x: [Float], rows: Int, _ layer: MiniLMEncoder.Linear) -> [Float] {
        let inputs = layer.inputs
        let outputs = layer.outputs
        precondition(inputs % Vector.scalarCount == 0)
        var result = [Float](repeating: 0, count: rows * outputs)
        x.withUnsafeBufferPointer { xs in
            layer.weight.withUnsafeBufferPointer { ws in
                result.withUnsafeMutableBufferPointer { out in
                    let xBase = UnsafeRawPointer(xs.baseAddress!)
                    let wBase = UnsafeRawPointer(ws.baseAddress!)
                    var row = 0
                    // Four input rows share each weight-row load.
                    while row + 4 <= rows {
                        for o in 0..<outputs {
                            var a0 = Vector(), a1 = Vector(), a2 = Vector(), a3 = Vector()
                            let w = wBase + o * inputs * 4
                            var k = 0
                            while k < inputs {
                                let wv = (w + k * 4).loadUnaligned(as: Vector.self)
                                a0 += (xBase + (row * inputs + k) * 4).loadUnaligned(as: Vector.self) * wv
                                a1 += (xBase + ((row + 1) * inputs + k) * 4).loadUnaligned(as: Vector.self) * wv
                                a2 += (xBase + ((row + 2) * inputs + k) * 4).loadUnaligned(as: Vector.self) * wv
                                a3 += (xBase + ((row + 3) * inputs + k) * 4).loadUnaligned(as: Vector.self) * wv
                                k += Vector.scalarCount
                            }
                            let b = layer.bias[o]
                            out[row * outputs + o] = a0.sum() + b
                            out[(row + 1) * outputs + o] = a1.sum() + b
                            out[(row + 2) * outputs + o] = a2.sum() + b
                            out[(row + 3) * outputs + o] = a3.sum() + b
                        }
                        row += 4
                    }
                    while row < rows {
                        for o in 0..<outputs {
                            var a0 = Vector()
                            let w = wBase + o * inputs * 4
                            var k = 0
                            while k < inputs {
                                a0 += (xBase + (row * inputs + k) * 4).loadUnaligned(as: Vector.self) * (w + k * 4).loadUnaligned(as: Vector.self)
                                k += Vector.scalarCount
                            }
                            out[row * outputs + o] = a0.sum() + layer.bias[o]
                        }
                        row += 1
                    }
                }
            }
        }
        return result
    }

    /// Multi-head self-attention within each sequence of a stacked batch.
    static func attention(query: [Float], key: [Float], value: [Float], segments: [Range<Int>]) -> [Float] {
        let hidden = MiniLMEncoder.dimension
        let size = MiniLMEncoder.headSize
        let scale = 1 / Float(size).squareRoot()
        var context = [Float](repeating: 0, count: query.count)
        var scores = [Float](repeating: 0, count: segments.map(\.count).max() ?? 0)
        query.withUnsafeBufferPointer { q in
            key.withUnsafeBufferPointer { k in
                value.withUnsafeBufferPointer { v in
                    context.withUnsafeMutableBufferPointer { out in
                        for segment in segments {
                            for head in 0..<MiniLMEncoder.heads {
                                let offset = head * size
                                for i in segment {
                                    let qi = UnsafeRawPointer(q.baseAddress! + i * hidden + offset)
                                    let q0 = qi.loadUnaligned(as: Vector.self)
                                    let q1 = (qi + 64).loadUnaligned(as: Vector.self)
                                    var maximum = -Float.infinity
                                    for j in segment {
                                        let kj = UnsafeRawPointer(k.baseAddress! + j * hidden + offset)
                                        let dot = (q0 * kj.loadUnaligned(as: Vector.self) + q1 * (kj + 64).loadUnaligned(as: Vector.self)).sum()
                                        let score = dot * scale
                                        scores[j - segment.lowerBound] = score
                                        maximum = max(maximum, score)
                                    }
                                    var total: Float = 0
                                    for j in 0..<segment.count {
                                        scores[j] = expf(scores[j] - maximum)
                                        total += scores[j]
                                    }
                                    var c0 = Vector(), c1 = Vector()
                                    for j in segment {
                                        let weight = scores[j - segment.lowerBound] / total
                                        let vj = UnsafeRawPointer(v.baseAddress! + j * hidden + offset)
                                        c0 += weight * vj.loadUnaligned(as: Vector.self)
                                        c1 += weight * (vj + 64).loadUnaligned(as: Vector.self)
                                    }
                                    let target = UnsafeMutableRawPointer(out.baseAddress! + i * hidden + offset)
                                    target.storeBytes(of: c0, as: Vector.self)
                                    (target + 64).storeBytes(of: c1, as: Vector.self)
                                }
                            }
                        }
                    }
                }
            }
        }
        return context
    }

    static func add(_ x: inout [Float], _ y: [Float]) {
        for index in x.indices { x[index] += y[index] }
    }

    static func layerNorm(_ x: inout [Float], rows: Int, norm: MiniLMEncoder.Norm) {
        let hidden = MiniLMEncoder.dimension
        for row in 0..<rows {
            let base = row * hidden
            var mean: Float = 0
            for d in 0..<hidden { mean += x[base + d] }
            mean /= Float(hidden)
            var variance: Float = 0
            for d in 0..<hidden {
                let centred = x[base + d] - mean
                variance += centred * centred
            }
            variance /= Float(hidden)
            let inverse = 1 / (variance + MiniLMEncoder.epsilon).squareRoot()
            for d in 0..<hidden {
                x[base + d] = (x[base + d] - mean) * inverse * norm.weight[d] + norm.bias[d]
            }
        }
    }

    /// GELU with the exact error function, as BERT's `gelu`.
    static func gelu(_ x: inout [Float]) {
        for index in x.indices {
            let value = x[index]
            x[index] = 0.5 * value * (1 + erff(value * 0.70710678118654752))
        }
    }
}
