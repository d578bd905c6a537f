import Foundation

extension ComplexityClassifier {
    /// The classifier shipped with the gateway (`Sources/Routing/complexity-v1.json`, trained by
    /// `switchyard train-router` on ../shared/data/routing).
    public static func bundled() throws(ClassifierFileError) -> ComplexityClassifier {
        guard let url = Bundle.module.url(forResource: "complexity-v1", withExtension: "json") else {
            throw ClassifierFileError(description: "the bundled classifier file is missing from this build")
        }
        return try load(path: url.path)
    }
}
