#include "formats/dtype.h"

#include <gtest/gtest.h>

namespace ds::fmt {
namespace {

TEST(DTypeTest, NamesRoundTripAndSizesMatch) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64, DType::kI64, DType::kI32,
                  DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    EXPECT_EQ(DTypeFromName(DTypeName(d)), d);
    EXPECT_EQ(DTypeFromSafetensorsName(DTypeSafetensorsName(d)), d);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF32), 4u);
  EXPECT_EQ(DTypeSize(DType::kI64), 8u);
  EXPECT_EQ(DTypeName(DType::kBF16), "bfloat16");
  EXPECT_EQ(DTypeSafetensorsName(DType::kBF16), "BF16");
  EXPECT_FALSE(DTypeFromName("complex64").has_value());
  EXPECT_TRUE(DTypeIsFloat(DType::kF16));
  EXPECT_FALSE(DTypeIsFloat(DType::kI32));
}

}  // namespace
}  // namespace ds::fmt
