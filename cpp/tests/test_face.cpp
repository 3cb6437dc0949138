// FaceFrontEnd against facelab.face (goldens from make_models.py): boxes, 68 landmarks and aligned landmarks <= 1 px.
#include <cstdlib>
#include <opencv2/imgcodecs.hpp>

#include "facelab/config.h"
#include "facelab/face_front_end.h"
#include "testing.h"

using namespace facelab;

template <class F>
std::string errorOf(F f) {
  try { f(); } catch (const std::exception& e) { return e.what(); }
  return "";
}

int main(int argc, char** argv) {
  if (argc < 2) { std::cerr << "usage: facelab_face_test MODELS_DIR\n"; return 2; }
  std::string d = std::string(argv[1]) + "/face/";
  if (!std::ifstream(d + "face.golden.json")) {   // make_models.py writes it only when Python has dlib (the face extra)
    std::cerr << "SKIP: no " << d << "face.golden.json (the Python face extra is not installed: pip install 'facelab[face]')\n";
    return 77;
  }
  FaceConfig cfg;
  cfg.detect = true;
  cfg.templates = d + "face_templates.json";
  FaceFrontEnd fe(cfg);
  auto g = ftest::readJson(d + "face.golden.json");
  CHECK(g["cases"].size() >= 4, "expected the astronaut and 3 FaceSynth renders");
  double worst_lm = 0, worst_al = 0, worst_box = 0;
  for (auto& c : g["cases"]) {
    std::string img = d + c["image"].get<std::string>();
    cv::Mat bgr = cv::imread(img, cv::IMREAD_COLOR);
    CHECK(!bgr.empty(), img);
    auto faces = fe.detect(bgr);
    CHECK(faces.size() == c["faces"].size(), img << ": " << faces.size() << " faces, Python found " << c["faces"].size());
    CHECK(!faces.empty(), img << ": the golden has no face");
    for (size_t i = 0; i < faces.size(); ++i) {
      auto& pf = c["faces"][i];
      const Face& f = faces[i];
      double b[4] = {f.box.x, f.box.y, f.box.x + f.box.width, f.box.y + f.box.height};
      for (int k = 0; k < 4; ++k) worst_box = std::max(worst_box, std::fabs(b[k] - pf["box"][k].get<double>()));
      CHECK(std::fabs(f.score - pf["score"].get<double>()) < 1e-3, img << ": score " << f.score << " vs " << pf["score"]);
      CHECK(f.landmarks.size() == 68, img);
      for (size_t k = 0; k < 68; ++k)
        worst_lm = std::max({worst_lm, std::fabs(f.landmarks[k].x - pf["landmarks"][k][0].get<double>()),
                             std::fabs(f.landmarks[k].y - pf["landmarks"][k][1].get<double>())});
      for (auto& [name, pts] : pf["aligned"].items()) {
        const FaceTemplate& t = fe.templates().get(name);
        auto al = transformPoints(f.landmarks, fe.alignMatrix(f, t));
        for (size_t k = 0; k < 68; ++k)
          worst_al = std::max({worst_al, std::fabs(al[k].x - pts[k][0].get<double>()), std::fabs(al[k].y - pts[k][1].get<double>())});
        Face boxonly = f;
        boxonly.landmarks.clear();
        cv::Mat M = fe.alignMatrix(boxonly, t);
        for (int r = 0; r < 2; ++r)
          for (int k = 0; k < 3; ++k)
            CHECK(std::fabs(M.at<double>(r, k) - pf["box_aligned"][name][r][k].get<double>()) < 1e-6, img << " " << name << ": box matrix");
        cv::Mat crop = fe.align(bgr, f, t);
        CHECK(crop.rows == t.outSize() && crop.cols == t.outSize() && crop.channels() == (t.grey ? 1 : 3),
              name << ": crop " << crop.rows << "x" << crop.cols << "x" << crop.channels());
      }
    }
  }
  std::cout << "max |diff| vs Python: box " << worst_box << " px, landmarks " << worst_lm << " px, aligned landmarks "
            << worst_al << " px\n";
  CHECK(worst_box <= 1.0, "boxes differ by " << worst_box << " px");
  CHECK(worst_lm <= 1.0, "landmarks differ by " << worst_lm << " px");
  CHECK(worst_al <= 1.0, "aligned landmarks differ by " << worst_al << " px");
  // a frame without a face
  CHECK(fe.detect(cv::Mat(200, 200, CV_8UC3, cv::Scalar(90, 90, 90))).empty(), "a face in a flat grey image");
  // resized templates (get_template(t, size)) and the task -> template map
  CHECK(fe.templates().get("au").name == "opengraphau", "task au");
  CHECK(fe.templates().get("opengraphau_224").resized(112).size == 128, "resized 256/224 -> 128/112");
  // clear errors
  std::string e = errorOf([&] { fe.templates().get("nope"); });
  CHECK(e.find("unknown alignment template 'nope'") != std::string::npos && e.find("rafdb") != std::string::npos, e);
  FaceConfig bad = cfg;
  bad.shape_predictor = "/nonexistent/sp.dat";
  e = errorOf([&] { FaceFrontEnd x(bad); });
  CHECK(e.find("/nonexistent/sp.dat") != std::string::npos, e);
  bad = cfg;
  bad.templates = d + "missing_templates.json";
  e = errorOf([&] { FaceFrontEnd x(bad); });
  CHECK(e.find("missing_templates.json") != std::string::npos && e.find("face_templates.py") != std::string::npos, e);
  setenv("FACELAB_FACE_MODELS", "/nonexistent_dir", 1);
  std::string found = errorOf([] { findShapePredictor(); });
  CHECK(found.empty() || found.find("/nonexistent_dir") != std::string::npos, found);   // falls back to /usr/share/dlib
  e = errorOf([&] { parseConfig(R"({"models": {"macro": {"path": "m.onnx"}}, "face": {"detect": true, "evry": 2}})", "/tmp"); });
  CHECK(e.find("face: unknown key 'evry'") != std::string::npos, e);
  e = errorOf([&] { parseConfig(R"({"models": {"macro": {"path": "m.onnx"}}, "face": {"detect": true}})", "/tmp"); });
  CHECK(e.find("face.templates: missing") != std::string::npos, e);
  auto pc = parseConfig(R"({"models": {"macro": {"path": "m.onnx"}}, "face": {"templates": "t.json", "every": 3, "template": "au"}})", "/cfg");
  CHECK(pc.face.detect && pc.face.every == 3 && pc.face.templates == "/cfg/t.json" && pc.face.template_name == "au", "face section");
  CHECK(!parseConfig(R"({"models": {"macro": {"path": "m.onnx"}}})", "/cfg").face.detect, "no face section: crops");
  std::cout << "face: ok\n";
  return 0;
}
