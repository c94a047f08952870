#include "common/pch.h"
