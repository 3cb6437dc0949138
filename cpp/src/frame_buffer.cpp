#include "facelab/frame_buffer.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace facelab {

FrameBuffer::FrameBuffer(size_t length, size_t stride, size_t frame_size)
    : length_(length), stride_(stride), frame_size_(frame_size), data_(length * frame_size) {
  if (length == 0) throw std::invalid_argument("FrameBuffer: length must be >= 1");
  if (stride == 0) throw std::invalid_argument("FrameBuffer: stride must be >= 1");
}

void FrameBuffer::setStride(size_t stride) {
  if (stride == 0) throw std::invalid_argument("FrameBuffer: stride must be >= 1");
  stride_ = stride;
}

void FrameBuffer::configure(size_t length, size_t frame_size) {
  if (length == 0) throw std::invalid_argument("FrameBuffer: length must be >= 1");
  length_ = length;
  frame_size_ = frame_size;
  data_.assign(length * frame_size, 0.f);
  reset();
}

void FrameBuffer::reset() { count_ = head_ = last_due_ = 0; }

bool FrameBuffer::push(const std::vector<float>& frame) {
  if (frame.size() != frame_size_)
    throw std::invalid_argument("FrameBuffer: frame has " + std::to_string(frame.size()) + " values, expected " +
                                std::to_string(frame_size_));
  return push(frame.data());
}

bool FrameBuffer::push(const float* frame) {
  std::copy(frame, frame + frame_size_, data_.begin() + static_cast<std::ptrdiff_t>(head_ * frame_size_));
  head_ = (head_ + 1) % length_;
  ++count_;
  if (count_ < length_) return false;
  if (count_ == length_ || count_ - last_due_ >= stride_) {
    last_due_ = count_;
    return true;
  }
  return false;
}

void FrameBuffer::window(float* dst) const {
  if (!full()) throw std::logic_error("FrameBuffer: window() before the buffer is full");
  // head_ is the oldest frame once full
  for (size_t i = 0; i < length_; ++i) {
    size_t k = (head_ + i) % length_;
    std::copy(data_.begin() + static_cast<std::ptrdiff_t>(k * frame_size_),
              data_.begin() + static_cast<std::ptrdiff_t>((k + 1) * frame_size_), dst + i * frame_size_);
  }
}

}  // namespace facelab
