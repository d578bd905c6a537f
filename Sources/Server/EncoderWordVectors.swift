public import Caching
public import Embeddings

/// The on-device encoder's input vectors, for the pair verifier.
public struct EncoderWordVectors: WordVectors {
    public let encoder: MiniLMEncoder

    public init(encoder: MiniLMEncoder) {
        self.encoder = encoder
    }

    public func vector(ofWord word: String) -> [Float] {
        encoder.wordVector(word)
    }
}
