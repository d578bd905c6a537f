import ArgumentParser
import Embeddings
import Foundation
import LoadTest
import Routing
import SwitchyardCore
import SwitchyardModels

/// `switchyard eval token-estimate`: how far the gateway's input-token estimate (UTF-8 bytes / 4, what token limits
/// reserve before the provider reports its count) is from a subword tokenizer's count, on the shared prompts.
///
/// The reference is MiniLM's WordPiece tokenizer (uncased BERT, 30,522 pieces), the one subword tokenizer on the
/// machine: the providers' own tokenizers are not available offline, so the figures are a proxy for them. What
/// matters for a limit is an under-estimate: a reservation smaller than the real count lets the limit be exceeded
/// by the difference until the request settles.
struct TokenEstimateEval: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token-estimate")

    @Option(help: "Folder with the cache evaluation files.") var cacheData = "../shared/data/cache"
    @Option(help: "Folder with the routing evaluation files.") var routingData = "../shared/data/routing"
    @Option(help: "Model cache folder.") var dir: String?

    func run() throws {
        let store = ModelStore(root: dir)
        let tokenizer: WordPieceTokenizer
        do {
            tokenizer = try WordPieceTokenizer(vocabularyFile: store.modelDirectory + "/vocab.txt", maximumLength: Int.max / 2)
        } catch {
            throw ValidationError("no tokenizer (run `switchyard models pull`): \(error)")
        }
        var sets: [(String, [String])] = []
        sets.append(("Banking77 questions", try QuestionPool.banking77(path: "\(cacheData)/banking77_test.csv").texts))
        do {
            let examples = try RoutingData.load(directory: routingData)
            for dataset in Set(examples.map(\.dataset)).sorted() {
                sets.append(("\(dataset) prompts", examples.filter { $0.dataset == dataset }.map(\.prompt)))
            }
        } catch {
            throw ValidationError("cannot read \(routingData): \(error)")
        }
        print("input-token estimate (bytes / 4) against WordPiece tokens (without [CLS] and [SEP])")
        print("| prompts | count | median tokens | estimate / tokens p5 | p50 | p95 | under-estimated | worst under-estimate |")
        print("|---|---|---|---|---|---|---|---|")
        for (name, texts) in sets where !texts.isEmpty {
            var ratios: [Double] = []
            var tokens: [Int] = []
            var under = 0
            var worst = 0.0
            for text in texts {
                let counted = max(tokenizer.encode(text).count - 2, 1)
                let request = ChatRequest(model: "m", messages: [ChatMessage(role: .user, content: [.text(text)])], sourceFormat: .openAI)
                let estimate = request.estimatedInputTokens
                let ratio = Double(estimate) / Double(counted)
                ratios.append(ratio)
                tokens.append(counted)
                if estimate < counted {
                    under += 1
                    worst = max(worst, 1 - ratio)
                }
            }
            ratios.sort()
            tokens.sort()
            func at(_ share: Double) -> Double { ratios[min(Int(Double(ratios.count - 1) * share), ratios.count - 1)] }
            print(String(format: "| %@ | %d | %d | %.2f | %.2f | %.2f | %.1f%% | %.0f%% |", name, texts.count, tokens[tokens.count / 2],
                         at(0.05), at(0.5), at(0.95), 100 * Double(under) / Double(texts.count), 100 * worst))
        }
    }
}
