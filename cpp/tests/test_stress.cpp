// Stress: 4 inference threads while 200 reloads alternate good and bad models. Zero failed inferences (every output
// equals the golden output of one of the two good models), every bad model rejected, every good one accepted.
// Also built and run under ThreadSanitizer and AddressSanitizer (FACELAB_SANITIZE).
// Usage: facelab_stress MODELS_DIR [reloads=200]
#include <atomic>
#include <thread>

#include <opencv2/imgcodecs.hpp>

#include "facelab/macro_engine.h"
#include "testing.h"

using namespace facelab;

int main(int argc, char** argv) {
  CHECK(argc >= 2, "usage: facelab_stress MODELS_DIR [reloads]");
  const std::string D = argv[1];
  const int reloads = argc > 2 ? std::atoi(argv[2]) : 200;
  auto ga = ftest::readJson(D + "/macro.golden.json"), gb = ftest::readJson(D + "/macro_b.golden.json");
  // both models see the same image: macro_b's golden case 0 is a different image, so compute B's output on A's
  // image once, with B loaded, and check it against B's own golden first
  cv::Mat im = cv::imread(D + "/" + ga["cases"][0]["files"][0].get<std::string>(), cv::IMREAD_COLOR);
  CHECK(!im.empty(), "image");
  auto refA = ftest::readBin(D + "/" + ga["cases"][0]["outputs"][0].get<std::string>());
  MacroEngine e({1, 1});
  CHECK(e.reloadModel(D + "/macro_b.onnx").empty(), "macro_b loads");
  cv::Mat imb = cv::imread(D + "/" + gb["cases"][0]["files"][0].get<std::string>(), cv::IMREAD_COLOR);
  CHECK(ftest::maxAbsDiff(e.predict(imb).logits, ftest::readBin(D + "/" + gb["cases"][0]["outputs"][0].get<std::string>())) <= 1e-5f,
        "macro_b golden");
  auto refB = e.predict(im).logits;
  CHECK(e.reloadModel(D + "/macro.onnx").empty(), "macro loads");

  std::atomic<bool> stop{false};
  std::atomic<long> ok{0}, failed{0};
  std::vector<std::thread> th;
  for (int t = 0; t < 4; ++t)
    th.emplace_back([&] {
      while (!stop.load()) {
        try {
          auto l = e.predict(im).logits;
          bool good = ftest::maxAbsDiff(l, refA) <= 1e-5f || ftest::maxAbsDiff(l, refB) <= 1e-5f;
          (good ? ok : failed)++;
        } catch (const std::exception& ex) {
          std::fprintf(stderr, "inference failed: %s\n", ex.what());
          failed++;
        }
      }
    });
  const char* bad[] = {"bad_corrupt.onnx", "bad_shape.onnx", "bad_nometa.onnx", "bad_nan.onnx", "bad_weights.onnx"};
  int good_ok = 0, bad_rejected = 0, n_good = 0, n_bad = 0;
  for (int i = 0; i < reloads; ++i) {
    if (i % 2 == 0) {
      ++n_good;
      good_ok += e.reloadModel(D + ((i / 2) % 2 ? "/macro.onnx" : "/macro_b.onnx")).empty();
    } else {
      ++n_bad;
      bad_rejected += !e.reloadModel(D + "/" + bad[(i / 2) % 5]).empty();
    }
  }
  stop = true;
  for (auto& t : th) t.join();
  std::printf("%d reloads: %d/%d good accepted, %d/%d bad rejected; %ld inferences ok, %ld failed\n", reloads, good_ok,
              n_good, bad_rejected, n_bad, ok.load(), failed.load());
  CHECK(failed == 0, failed << " failed inferences");
  CHECK(ok > 0, "no inference ran");
  CHECK(good_ok == n_good, "every good model must load");
  CHECK(bad_rejected == n_bad, "every bad model must be rejected");
  return 0;
}
